"""Run the sampler a SampleConfig describes (grid + ODE solver or SDE) on a velocity function."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mmflow.flow.paths import GaussianPath
from mmflow.sampling.grids import make_grid
from mmflow.sampling.sde import sde_solve
from mmflow.sampling.solvers import SampleOutput, VelocityFn, meanflow_solve, ode_solve


def solve(fn: VelocityFn, x0: Tensor, cfg: Any, path: GaussianPath, generator: torch.Generator | None = None,
          return_trajectory: bool = False) -> SampleOutput:
    """Integrate from noise x0 (t=0) to data (t=1) with cfg.solver/steps/grid/shift (a SampleConfig)."""
    grid = make_grid(cfg.grid, cfg.steps, cfg.shift).to(device=x0.device, dtype=x0.dtype)
    if cfg.solver == "meanflow":
        return meanflow_solve(fn, x0, grid, return_trajectory=return_trajectory)
    if cfg.solver == "sde":
        return sde_solve(fn, x0, grid, path, noise_scale=cfg.noise_scale, diffusion=cfg.diffusion,
                         generator=generator, return_trajectory=return_trajectory)
    return ode_solve(fn, x0, grid, method=cfg.solver, return_trajectory=return_trajectory)
