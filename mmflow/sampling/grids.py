"""Time grids for sampling, increasing from t = 0 (noise) to t = 1 (data).

A grid of n steps has n + 1 points and ends exactly at t = 1: the seeds' Algorithm 1 loops
i = 1..n-1 and so stops at t = 1 - h; here every solver takes all n steps.

The SD3 shift is defined on the noise level sigma = 1 - t (as in diffusers'
FlowMatchEulerDiscreteScheduler): sigma' = s sigma / (1 + (s - 1) sigma). With s > 1 sigma' > sigma,
so more of the steps are spent at high noise (small t), which large images need.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["GRIDS", "uniform_grid", "shifted_grid", "make_grid"]

GRIDS = ("uniform", "shifted")


def uniform_grid(
    n_steps: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """(n_steps + 1,) evenly spaced times 0, 1/n, ..., 1."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    return torch.linspace(0.0, 1.0, n_steps + 1, device=device, dtype=dtype)


def shifted_grid(
    n_steps: int,
    shift: float,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """(n_steps + 1,) times t = 1 - sigma', sigma' the SD3-shifted sigma = 1 - uniform_grid.

    shift = 1 is the uniform grid; endpoints stay exactly 0 and 1 for every shift > 0.
    """
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    sigma = 1.0 - uniform_grid(n_steps, device=device, dtype=dtype)
    sigma = shift * sigma / (1.0 + (shift - 1.0) * sigma)
    return 1.0 - sigma


def make_grid(
    name: str,
    n_steps: int,
    shift: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Grid by name: "uniform" (shift must be 1) or "shifted"."""
    if name == "uniform":
        if shift != 1.0:
            raise ValueError(f"the uniform grid takes no shift (got {shift}); use name='shifted'")
        return uniform_grid(n_steps, device=device, dtype=dtype)
    if name == "shifted":
        return shifted_grid(n_steps, shift, device=device, dtype=dtype)
    raise ValueError(f"unknown time grid {name!r}; expected one of {list(GRIDS)}")
