"""Training-time samplers t ~ pi(t) on [0, 1] (Esser et al. 2024, "SD3", section 3.1).

Convention: t = 0 is noise, t = 1 is data. SD3 writes its densities for the noise level
sigma (SD3's own "t", x = (1 - sigma) z + sigma eps), which is our 1 - t. Each sampler here draws
sigma with SD3's formula, exactly as diffusers' `compute_density_for_timestep_sampling` computes it
(same torch calls, so the same generator gives the same variates), and returns t = 1 - sigma.
Consequences:
  * logit-normal with m > 0 puts more mass at high noise, i.e. at small t (as SD3 intends);
  * "mode" and "cosmap" are symmetric about 1/2, so the flip changes nothing for them.

Endpoints: every sampler returns values in [0, 1]; uniform, mode and cosmap can hit an endpoint
exactly (logit-normal can too in float32, by saturation). That is harmless for CondOT and cosine,
whose targets are finite everywhere, but VP's beta' blows up at t = 1: pass `eps > 0` to clamp draws
into [eps, 1 - eps] there. The default eps = 0 only clamps float round-off back into [0, 1].
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

__all__ = [
    "TimeSampler",
    "UniformTimeSampler",
    "LogitNormalTimeSampler",
    "ModeTimeSampler",
    "CosMapTimeSampler",
    "TIME_SAMPLERS",
    "get_time_sampler",
]

# SD3 (appendix B.3): f_mode is monotone, hence a valid inverse CDF, only for scale in this range.
_MODE_SCALE_MIN, _MODE_SCALE_MAX = -1.0, 2.0 / (math.pi - 2.0)


class TimeSampler(ABC):
    """Draws n training times in [0, 1]; `eps` clamps them into [eps, 1 - eps]."""

    name: str = ""

    def __init__(self, eps: float = 0.0) -> None:
        if not 0.0 <= eps < 0.5:
            raise ValueError(f"eps must be in [0, 0.5), got {eps}")
        self.eps = float(eps)

    def sample(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        """(n,) float32 times in [0, 1]."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        t = 1.0 - self._sample_sigma(n, generator, device)
        # With eps = 0 this only removes float round-off just outside [0, 1].
        return t.clamp(self.eps, 1.0 - self.eps)

    @abstractmethod
    def _sample_sigma(self, n: int, generator: torch.Generator | None, device) -> Tensor:
        """(n,) SD3 noise levels sigma = 1 - t."""


class UniformTimeSampler(TimeSampler):
    """t ~ U[0, 1), the seeds' Algorithm 3."""

    name = "uniform"

    def _sample_sigma(self, n, generator, device):
        return torch.rand((n,), generator=generator, device=device)

    def __repr__(self) -> str:
        return "UniformTimeSampler()"


class LogitNormalTimeSampler(TimeSampler):
    """sigma = sigmoid(N(m, s^2)); m > 0 biases towards noise (small t), m < 0 towards data."""

    name = "logit_normal"

    def __init__(self, m: float = 0.0, s: float = 1.0, eps: float = 0.0) -> None:
        super().__init__(eps)
        if not s > 0.0 or not math.isfinite(s):
            raise ValueError(f"logit-normal scale s must be finite and > 0, got {s}")
        if not math.isfinite(m):
            raise ValueError(f"logit-normal location m must be finite, got {m}")
        self.m, self.s = float(m), float(s)

    def _sample_sigma(self, n, generator, device):
        u = torch.normal(mean=self.m, std=self.s, size=(n,), generator=generator, device=device)
        return torch.sigmoid(u)

    def __repr__(self) -> str:
        return f"LogitNormalTimeSampler(m={self.m}, s={self.s})"


class ModeTimeSampler(TimeSampler):
    """sigma = f_mode(u) = 1 - u - scale (cos^2(pi u / 2) - 1 + u), u ~ U[0, 1).

    scale = 0 is uniform; scale > 0 concentrates mass around t = 1/2, scale < 0 at the ends.
    Valid (monotone) for scale in [-1, 2 / (pi - 2)].
    """

    name = "mode"

    def __init__(self, scale: float = 1.29, eps: float = 0.0) -> None:
        super().__init__(eps)
        if not _MODE_SCALE_MIN <= scale <= _MODE_SCALE_MAX:
            raise ValueError(
                f"mode scale must be in [{_MODE_SCALE_MIN}, {_MODE_SCALE_MAX:.4f}] (else f_mode is not "
                f"monotone), got {scale}"
            )
        self.scale = float(scale)

    def _sample_sigma(self, n, generator, device):
        u = torch.rand((n,), generator=generator, device=device)
        return 1 - u - self.scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)

    def __repr__(self) -> str:
        return f"ModeTimeSampler(scale={self.scale})"


class CosMapTimeSampler(TimeSampler):
    """sigma = 1 - 1 / (tan(pi u / 2) + 1), u ~ U[0, 1): density 2 / (pi (1 - 2t + 2t^2)).

    Not in diffusers' sampler (which has the matching loss weight only); SD3 eq. 20.
    """

    name = "cosmap"

    def _sample_sigma(self, n, generator, device):
        u = torch.rand((n,), generator=generator, device=device)
        return 1 - 1 / (torch.tan(math.pi * u / 2) + 1)

    def __repr__(self) -> str:
        return "CosMapTimeSampler()"


TIME_SAMPLERS: dict[str, type[TimeSampler]] = {
    cls.name: cls
    for cls in (UniformTimeSampler, LogitNormalTimeSampler, ModeTimeSampler, CosMapTimeSampler)
}


def get_time_sampler(name: str, **kwargs: float) -> TimeSampler:
    """Build a sampler by registry name ("uniform", "logit_normal", "mode", "cosmap")."""
    if name not in TIME_SAMPLERS:
        raise ValueError(f"unknown time sampler {name!r}; expected one of {sorted(TIME_SAMPLERS)}")
    return TIME_SAMPLERS[name](**kwargs)
