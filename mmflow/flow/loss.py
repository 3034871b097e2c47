"""Conditional flow matching loss, robust variants, SD3 loss weightings and per-t diagnostics.

Convention: t = 0 is noise, t = 1 is data; SD3 / diffusers weightings are written for the noise
level sigma = 1 - t and are converted here.

L_CFM = E_t E_{z, eps} w(t) rho(u_theta(x_t, t) - (alpha' z + beta' eps)), with r the residual (D values
per example) and rho one of (each a mean over the non-batch dims, so its scale does not depend on
resolution):
  l2:           mean(r^2)
  l1:           mean(|r|)
  pseudo_huber: sqrt(mean(r^2) + c^2) - c, the pseudo-Huber loss of improved consistency training (Song &
                Dhariwal 2023) and of rectified flow++ (Lee et al. 2024), sqrt(|r|^2 + c'^2) - c' with
                c' = 0.00054 sqrt(D), divided by sqrt(D): c = 0.00054 is their c' on our mean scale.
                mean(r^2) / (2c) for small residuals, RMS(r) for large ones (the gradient's norm is bounded).

MeanFlow's adaptive weight (Geng et al. 2025, after Song & Dhariwal 2023) multiplies each row's rho by
sg(1 / (rho + c)^p): p = 0 is plain, p = 1 gives the gradient of log(rho + c), p = 0.5 a pseudo-Huber-like one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["LOSSES", "LOSS_WEIGHTINGS", "DEFAULT_HUBER_C", "loss_weight", "residual_loss", "CFMLoss", "cfm_loss",
           "TBinStats"]

LOSSES = ("l2", "l1", "pseudo_huber")
LOSS_WEIGHTINGS = ("none", "sigma_sqrt", "cosmap")
# Song & Dhariwal's c = 0.00054 sqrt(D) on the norm of a D-dim residual is 0.00054 on its RMS (see above)
DEFAULT_HUBER_C = 0.00054

# diffusers trains on sigmas in [1/1000, 1] (1000 discrete timesteps), so flooring sigma at 1e-3
# reproduces its weights exactly where it is defined and keeps sigma^-2 finite at t = 1.
_SIGMA_MIN = 1e-3


def loss_weight(t: Tensor, weighting: str) -> Tensor:
    """Per-example loss weight (B,) for t (B,), as diffusers' `compute_loss_weighting_for_sd3`.

    "none": 1. "sigma_sqrt": sigma^-2 with sigma = 1 - t floored at 1e-3 (so at most 1e6).
    "cosmap": 2 / (pi (1 - 2 sigma + 2 sigma^2)), which is bounded on [0, 1] (<= 4 / pi).
    """
    if weighting == "none":
        return torch.ones_like(t)
    sigma = 1.0 - t
    if weighting == "sigma_sqrt":
        return sigma.clamp_min(_SIGMA_MIN) ** -2.0
    if weighting == "cosmap":
        return 2.0 / (math.pi * (1.0 - 2.0 * sigma + 2.0 * sigma**2))
    raise ValueError(f"unknown loss weighting {weighting!r}; expected one of {list(LOSS_WEIGHTINGS)}")


def residual_loss(residual: Tensor, loss: str = "l2", huber_c: float = DEFAULT_HUBER_C,
                  mask: Tensor | None = None) -> Tensor:
    """Per-example loss (B,) of residual (B, ...): "l2", "l1" or "pseudo_huber" (see the module docstring).

    mask: bool, broadcastable to residual (e.g. (B, 1, T, 1, 1) for real video frames): the means run over
    the True elements of each example only (each needs one), so padding neither adds loss nor dilutes it.
    """
    if mask is None:
        r = residual.reshape(residual.shape[0], -1)  # (B, D)
        mean = lambda v: v.mean(dim=1)  # noqa: E731
    else:
        m = mask.expand_as(residual).reshape(residual.shape[0], -1).to(residual.dtype)  # (B, D) 0/1
        if bool((m.sum(dim=1) == 0).any()):
            raise ValueError("the loss mask leaves an example with no element")
        r = residual.reshape(residual.shape[0], -1) * m  # (B, D), masked elements 0
        count = m.sum(dim=1)  # (B,)
        mean = lambda v: v.sum(dim=1) / count  # noqa: E731
    if loss == "l2":
        return mean(r.pow(2))
    if loss == "l1":
        return mean(r.abs())
    if loss == "pseudo_huber":
        if not huber_c > 0:
            raise ValueError(f"huber_c must be > 0, got {huber_c}")
        mse = mean(r.pow(2))  # (B,)
        # = sqrt(mse + c^2) - c without its cancellation when mse << c^2
        return mse / ((mse + huber_c**2).sqrt() + huber_c)
    raise ValueError(f"unknown loss {loss!r}; expected one of {list(LOSSES)}")


@dataclass
class CFMLoss:
    """loss: scalar to backprop; per_example: (B,) unweighted loss (MSE for l2), still in the graph (detach to log)."""

    loss: Tensor
    per_example: Tensor


def cfm_loss(pred: Tensor, target: Tensor, t: Tensor, weighting: str = "none", loss: str = "l2",
             huber_c: float = DEFAULT_HUBER_C, mask: Tensor | None = None,
             row_weight: Tensor | None = None, adaptive_p: float = 0.0, adaptive_c: float = 1e-3) -> CFMLoss:
    """mean_b w(t_b) * rho(pred_b - target_b) for pred, target (B, ...), t (B,); rho from `residual_loss`
    (over the True elements of `mask`, broadcastable to pred, when given: padded video frames).
    row_weight (B,): sum_b row_weight_b w(t_b) rho_b instead of the mean (which is row_weight 1/B): e.g.
    DreamBooth's mean over instance rows + prior weight x mean over class rows (mmflow/tasks/prior.py).
    adaptive_p > 0: each row's term also times sg((rho_b + adaptive_c)^-p) (MeanFlow's adaptive weight).

    Computed in at least float32 so bf16 predictions do not lose the loss to round-off.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if t.shape != pred.shape[:1]:
        raise ValueError(f"t must be shaped ({pred.shape[0]},), got {tuple(t.shape)}")
    dtype = torch.promote_types(pred.dtype, torch.float32)
    per_example = residual_loss(pred.to(dtype) - target.to(dtype), loss, huber_c, mask)  # (B,)
    weight = loss_weight(t.to(dtype), weighting)  # (B,)
    if adaptive_p > 0:  # a weight, not a loss term: no gradient through it
        weight = weight * (per_example.detach() + adaptive_c) ** -adaptive_p
    if row_weight is None:
        return CFMLoss(loss=(weight * per_example).mean(), per_example=per_example)
    if row_weight.shape != per_example.shape:
        raise ValueError(f"row_weight must be shaped ({pred.shape[0]},), got {tuple(row_weight.shape)}")
    return CFMLoss(loss=(row_weight.to(dtype) * weight * per_example).sum(), per_example=per_example)


class TBinStats:
    """Running mean of a per-example quantity by t-bin (the seeds' "loss / norm per t" diagnostic).

    Bins are [k/n, (k+1)/n) for k < n - 1 and the last bin also holds t = 1. Accumulates in float64
    on the CPU, so it can be fed every step without growing or syncing more than one small copy.
    """

    def __init__(self, n_bins: int = 10) -> None:
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        self.n_bins = n_bins
        self.edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)  # (n_bins + 1,)
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(self.n_bins, dtype=torch.float64)
        self.counts = torch.zeros(self.n_bins, dtype=torch.long)

    def update(self, values: Tensor, t: Tensor) -> None:
        """Add values (B,) observed at times t (B,)."""
        values = values.detach().reshape(-1).to("cpu", torch.float64)
        t = t.detach().reshape(-1).to("cpu", torch.float64)
        if values.shape != t.shape:
            raise ValueError(f"values {tuple(values.shape)} and t {tuple(t.shape)} differ in shape")
        idx = (t * self.n_bins).floor().long().clamp(0, self.n_bins - 1)
        self.sums.index_add_(0, idx, values)
        self.counts.index_add_(0, idx, torch.ones_like(idx))

    def means(self) -> Tensor:
        """(n_bins,) mean per bin, NaN where a bin is empty."""
        return torch.where(
            self.counts > 0, self.sums / self.counts.clamp_min(1), torch.full_like(self.sums, math.nan)
        )
