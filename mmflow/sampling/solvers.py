"""Fixed-grid ODE solvers for dX_t/dt = u_t(X_t) from t = 0 (noise) to t = 1 (data).

Convention: t = 0 is noise, t = 1 is data; the grid is increasing and usually runs from 0 to 1
(see `mmflow.sampling.grids`). One call of the velocity function on the whole batch is one
function evaluation (NFE); an n-step solve costs euler n, midpoint 2n, heun 2n, rk4 4n of them
(counted, not computed, in `SampleOutput.nfe`). `meanflow_solve` is not an ODE solver: it jumps along the
grid with a MeanFlow model's average velocity, z_{t+h} = z_t + h u(z_t, t, h), one evaluation a jump
(mmflow/flow/meanflow.py); one jump over [0, 1] is one-step generation. Gradients are not disabled here: wrap the call in
torch.no_grad() (or inference_mode) to sample, leave them on to differentiate through the solver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

__all__ = ["VelocityFn", "SampleOutput", "SOLVER_ORDER", "ode_solve", "meanflow_solve", "check_grid"]

VelocityFn = Callable[..., Tensor]
"""(x (B, ...), t (B,)) -> v (B, ...); for meanflow_solve also h= (B,), the jump: the average velocity."""

SOLVER_ORDER: dict[str, int] = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}


@dataclass
class SampleOutput:
    """x: final state (B, ...); trajectory: (n + 1, B, ...) states on the grid or None; nfe: evaluations."""

    x: Tensor
    trajectory: Tensor | None
    nfe: int


def check_grid(grid: Tensor) -> None:
    """Raise ValueError unless grid is 1-D, has >= 2 points and is strictly increasing."""
    if grid.ndim != 1 or grid.shape[0] < 2:
        raise ValueError(f"grid must be 1-D with at least 2 points, got shape {tuple(grid.shape)}")
    if not bool((grid[1:] > grid[:-1]).all()):
        raise ValueError("grid must be strictly increasing (t = 0 is noise, t = 1 is data)")


def time_batch(t: Tensor, x: Tensor) -> Tensor:
    """Scalar time t broadcast to (B,) for a state x (B, ...)."""
    return t.expand(x.shape[0])


def _step(fn: VelocityFn, x: Tensor, t0: Tensor, t1: Tensor, method: str) -> Tensor:
    h = t1 - t0
    k1 = fn(x, time_batch(t0, x))
    if method == "euler":
        return x + h * k1
    if method == "midpoint":
        tm = t0 + 0.5 * h
        k2 = fn(x + (0.5 * h) * k1, time_batch(tm, x))
        return x + h * k2
    if method == "heun":
        # Trapezoid rule on an Euler predictor: second order, evaluates at the step's end.
        k2 = fn(x + h * k1, time_batch(t1, x))
        return x + (0.5 * h) * (k1 + k2)
    # rk4: the classic fourth-order Runge-Kutta tableau
    tm = t0 + 0.5 * h
    k2 = fn(x + (0.5 * h) * k1, time_batch(tm, x))
    k3 = fn(x + (0.5 * h) * k2, time_batch(tm, x))
    k4 = fn(x + h * k3, time_batch(t1, x))
    return x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def ode_solve(
    fn: VelocityFn,
    x0: Tensor,
    grid: Tensor,
    method: str = "euler",
    return_trajectory: bool = False,
) -> SampleOutput:
    """Integrate dx/dt = fn(x, t) from x0 (B, ...) at grid[0] to grid[-1] over grid (n + 1,).

    Methods (order): "euler" (1), "midpoint" (2), "heun" (2), "rk4" (4). Times passed to fn are
    (B,) in x0's dtype; heun and rk4 evaluate fn at grid[-1] itself (t = 1 for a full grid).
    """
    if method not in SOLVER_ORDER:
        raise ValueError(f"unknown ODE method {method!r}; expected one of {sorted(SOLVER_ORDER)}")
    check_grid(grid)
    grid = grid.to(device=x0.device, dtype=x0.dtype)
    nfe = 0

    def counted(x: Tensor, t: Tensor) -> Tensor:
        nonlocal nfe
        nfe += 1
        return fn(x, t)

    x = x0
    states = [x0] if return_trajectory else None
    for i in range(grid.shape[0] - 1):
        x = _step(counted, x, grid[i], grid[i + 1], method)
        if states is not None:
            states.append(x)
    trajectory = torch.stack(states) if states is not None else None
    return SampleOutput(x=x, trajectory=trajectory, nfe=nfe)


def meanflow_solve(fn: VelocityFn, x0: Tensor, grid: Tensor, return_trajectory: bool = False) -> SampleOutput:
    """Jump from x0 (B, ...) at grid[0] along grid (n + 1,): x <- x + h fn(x, t, h=h), h = the next point - t,
    with fn a MeanFlow model's average velocity (n evaluations; the uniform 1-step grid is one-step generation)."""
    check_grid(grid)
    grid = grid.to(device=x0.device, dtype=x0.dtype)
    x = x0
    states = [x0] if return_trajectory else None
    for i in range(grid.shape[0] - 1):
        t0, h = grid[i], grid[i + 1] - grid[i]
        x = x + h * fn(x, time_batch(t0, x), h=time_batch(h, x))
        if states is not None:
            states.append(x)
    trajectory = torch.stack(states) if states is not None else None
    return SampleOutput(x=x, trajectory=trajectory, nfe=grid.shape[0] - 1)
