"""Time grids for sampling, increasing from t = 0 (noise) to t = 1 (data).

A grid of n steps has n + 1 points and ends exactly at t = 1: the seeds' Algorithm 1 loops
i = 1..n-1 and so stops at t = 1 - h; here every solver takes all n steps.

The SD3 shift is defined on the noise level sigma = 1 - t (as in diffusers'
FlowMatchEulerDiscreteScheduler): sigma' = s sigma / (1 + (s - 1) sigma). With s > 1 sigma' > sigma,
so more of the steps are spent at high noise (small t), which large images need.

The "sd3" grid is the schedule diffusers' FlowMatchEulerDiscreteScheduler gives SD3 / SD3.5 pipelines
(static shift, 1000 training steps), so a converted pipeline steps exactly as diffusers does: its
sigmas run linearly from 1 to the shifted noise level of the last training step, sigma_min =
S(1/1000), are then shifted (the end point is thus shifted twice), and a final step goes to sigma = 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["GRIDS", "SD3_TRAIN_STEPS", "uniform_grid", "shifted_grid", "sd3_grid", "make_grid"]

GRIDS = ("uniform", "shifted", "sd3")
SD3_TRAIN_STEPS = 1000  # num_train_timesteps of the SD3 / SD3.5 schedulers


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
    sigma = 1.0 - uniform_grid(n_steps, device=device, dtype=dtype)
    return 1.0 - _shift_sigma(sigma, shift)


def sd3_grid(n_steps: int, shift: float, device: torch.device | str | None = None,
             dtype: torch.dtype | None = None) -> Tensor:
    """(n_steps + 1,) times t = 1 - sigma of diffusers' SD3 schedule (see the module docstring):
    sigma_i = S(1 - i (1 - S(1/1000)) / (n - 1)) for i < n, sigma_n = 0. Computed in float64, then cast."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    sigma_min = _shift_sigma(torch.tensor(1.0 / SD3_TRAIN_STEPS, dtype=torch.float64), shift)
    sigma = _shift_sigma(torch.linspace(1.0, float(sigma_min), n_steps, dtype=torch.float64), shift)  # (n,)
    t = 1.0 - torch.cat([sigma, sigma.new_zeros(1)])  # (n + 1,): the last step lands on data
    return t.to(device=device, dtype=dtype or torch.get_default_dtype())


def _shift_sigma(sigma: Tensor, shift: float) -> Tensor:
    """SD3's shift of a noise level: s sigma / (1 + (s - 1) sigma); fixes 0 and 1."""
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def make_grid(
    name: str,
    n_steps: int,
    shift: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Grid by name: "uniform" (shift must be 1), "shifted" or "sd3"."""
    if name == "uniform":
        if shift != 1.0:
            raise ValueError(f"the uniform grid takes no shift (got {shift}); use name='shifted'")
        return uniform_grid(n_steps, device=device, dtype=dtype)
    if name == "shifted":
        return shifted_grid(n_steps, shift, device=device, dtype=dtype)
    if name == "sd3":
        return sd3_grid(n_steps, shift, device=device, dtype=dtype)
    raise ValueError(f"unknown time grid {name!r}; expected one of {list(GRIDS)}")
