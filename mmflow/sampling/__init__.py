"""Sampling: time grids, ODE solvers, the SDE sampler and classifier-free guidance.

Convention: t = 0 is noise (N(0, I)), t = 1 is data; grids increase from 0 to 1.
"""

from mmflow.sampling.grids import GRIDS, make_grid, sd3_grid, shifted_grid, uniform_grid
from mmflow.sampling.guidance import ModelFn, cfg_velocity
from mmflow.sampling.sde import DIFFUSIONS, sde_solve
from mmflow.sampling.solvers import SOLVER_ORDER, SampleOutput, VelocityFn, check_grid, ode_solve

__all__ = [
    "DIFFUSIONS",
    "GRIDS",
    "ModelFn",
    "SOLVER_ORDER",
    "SampleOutput",
    "VelocityFn",
    "cfg_velocity",
    "check_grid",
    "make_grid",
    "ode_solve",
    "sd3_grid",
    "sde_solve",
    "shifted_grid",
    "uniform_grid",
]
