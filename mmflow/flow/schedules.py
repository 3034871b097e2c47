"""Noise schedules (alpha_t, beta_t) of Gaussian probability paths.

Convention (shared by all of mmflow): t = 0 is noise (p_init = N(0, I)), t = 1 is data, and

    x_t = alpha_t * z + beta_t * eps,    z ~ p_data,  eps ~ N(0, I),

so a schedule needs alpha_0 = 0, beta_0 = 1 and alpha_1 = 1, beta_1 = 0 (VP only approximately,
see `VPSchedule`). Peers that use a noise level sigma = 1 - t (diffusers, SD3) are converted at
their interop boundary, not here.

A schedule maps t (any shape) to a `ScheduleOutput` holding alpha, beta and their time
derivatives, all of the same shape as t. Derivatives are closed form (tests compare them with
autograd) because the training target alpha' z + beta' eps needs them at every step.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "ScheduleOutput",
    "Schedule",
    "CondOTSchedule",
    "CosineSchedule",
    "VPSchedule",
    "SCHEDULES",
    "get_schedule",
]


@dataclass(frozen=True)
class ScheduleOutput:
    """alpha_t, beta_t and d/dt of both; every field has the shape of the t it came from."""

    alpha: Tensor
    beta: Tensor
    d_alpha: Tensor
    d_beta: Tensor


class Schedule(ABC):
    """A pair of differentiable functions (alpha_t, beta_t) on [0, 1]."""

    name: str = ""

    @abstractmethod
    def __call__(self, t: Tensor) -> ScheduleOutput:
        """t: any shape, floating -> ScheduleOutput with fields shaped like t."""

    def beta_d_beta(self, t: Tensor) -> Tensor:
        """beta_t * beta'_t = d/dt (beta_t^2 / 2), shaped like t.

        Finite even where beta' is not (VP at t = 1, where beta = 0 and beta' = -inf): exact
        velocities such as E[beta' eps | x] ~ beta beta' / var (x - alpha mu) need it there.
        """
        out = self(t)
        return out.beta * out.d_beta

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CondOTSchedule(Schedule):
    """Conditional optimal transport (rectified flow): alpha = t, beta = 1 - t, target z - eps."""

    name = "condot"

    def __call__(self, t: Tensor) -> ScheduleOutput:
        return ScheduleOutput(
            alpha=t,
            beta=1.0 - t,
            d_alpha=torch.ones_like(t),
            d_beta=-torch.ones_like(t),
        )


class CosineSchedule(Schedule):
    """alpha = sin(pi t / 2), beta = cos(pi t / 2): variance preserving, alpha^2 + beta^2 = 1."""

    name = "cosine"

    def __call__(self, t: Tensor) -> ScheduleOutput:
        angle = 0.5 * math.pi * t
        sin, cos = torch.sin(angle), torch.cos(angle)
        return ScheduleOutput(
            alpha=sin,
            beta=cos,
            d_alpha=0.5 * math.pi * cos,
            d_beta=-0.5 * math.pi * sin,
        )


class VPSchedule(Schedule):
    """Variance-preserving diffusion path of Lipman et al. 2023 (eq. 19), in mmflow's time.

    With s = 1 - t the diffusion time and T(s) = s beta_min + s^2 (beta_max - beta_min) / 2:

        alpha_t = exp(-T(1 - t) / 2),   beta_t = sqrt(1 - alpha_t^2).

    Caveats:
      * alpha_0 = exp(-T(1) / 2) ~ 0.0066 for the defaults, not 0: p_0 is only close to N(0, I).
      * beta_t ~ sqrt(beta_min (1 - t)) near t = 1, so d_beta = -alpha alpha' / beta -> -inf.
        The denominator is clamped at the dtype's machine epsilon: d_beta is large but finite at
        t = 1 and exact (no NaN, no inf) for every t in [0, 1).
    """

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        if not 0.0 < beta_min <= beta_max:
            raise ValueError(f"VPSchedule needs 0 < beta_min <= beta_max, got {beta_min}, {beta_max}")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def __call__(self, t: Tensor) -> ScheduleOutput:
        s = 1.0 - t
        big_t = s * self.beta_min + 0.5 * s**2 * (self.beta_max - self.beta_min)  # T(s)
        rate = self.beta_min + s * (self.beta_max - self.beta_min)  # dT/ds
        alpha = torch.exp(-0.5 * big_t)
        # 1 - alpha^2 = -expm1(-T) keeps precision when T is tiny (t close to 1).
        beta = torch.sqrt(-torch.expm1(-big_t))
        d_alpha = 0.5 * rate * alpha  # d/dt = -d/ds, and d/ds exp(-T/2) = -T'/2 exp(-T/2)
        eps = torch.finfo(beta.dtype).eps
        d_beta = -alpha * d_alpha / beta.clamp_min(eps)  # from alpha^2 + beta^2 = 1
        return ScheduleOutput(alpha=alpha, beta=beta, d_alpha=d_alpha, d_beta=d_beta)

    def beta_d_beta(self, t: Tensor) -> Tensor:
        out = self(t)
        return -out.alpha * out.d_alpha  # from alpha^2 + beta^2 = 1; no 0 * inf at t = 1

    def __repr__(self) -> str:
        return f"VPSchedule(beta_min={self.beta_min}, beta_max={self.beta_max})"


SCHEDULES: dict[str, type[Schedule]] = {
    CondOTSchedule.name: CondOTSchedule,
    CosineSchedule.name: CosineSchedule,
    VPSchedule.name: VPSchedule,
}


def get_schedule(name: str, **kwargs: float) -> Schedule:
    """Build a schedule by registry name ("condot", "cosine", "vp"); kwargs go to its constructor."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; expected one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](**kwargs)
