"""Stochastic sampling with a flow model (the lecture notes' SDE extension trick).

Convention: t = 0 is noise, t = 1 is data, x_t = alpha_t z + beta_t eps. For any diffusion
coefficient g_t >= 0 the SDE

    dX_t = [u_t(X_t) + g_t^2 / 2 * grad log p_t(X_t)] dt + g_t dW_t,    X_0 ~ N(0, I)

has the same marginals p_t as the ODE dX_t = u_t(X_t) dt (Fokker-Planck: the added drift and the
diffusion cancel). For a Gaussian path the score comes from the velocity itself,
score = -eps_hat / beta with eps_hat = (alpha v - alpha' x) / det, so no extra network evaluation
is needed: one evaluation per step, as Euler.

Diffusions:
  * "beta":     g = noise_scale * beta_t, drift term g^2/2 score = -noise_scale^2 beta_t / 2 * eps_hat,
                finite everywhere and vanishing at t = 1 with the noise;
  * "constant": g = noise_scale, drift term -noise_scale^2 / (2 beta_t) * eps_hat, which grows as
                t -> 1 (only ever evaluated at the left end of a step, so at t < 1).
The last step, which ends where beta = 0, is a plain Euler step with no noise: g = 0 on the last
interval is itself a valid choice of g_t and avoids injecting noise nothing can remove.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mmflow.flow.paths import GaussianPath
from mmflow.sampling.solvers import SampleOutput, VelocityFn, check_grid, time_batch

__all__ = ["DIFFUSIONS", "sde_solve"]

DIFFUSIONS = ("beta", "constant")


def sde_solve(
    fn: VelocityFn,
    x0: Tensor,
    grid: Tensor,
    path: GaussianPath,
    noise_scale: float = 1.0,
    diffusion: str = "beta",
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
) -> SampleOutput:
    """Euler-Maruyama from x0 (B, ...) over grid (n + 1,), n velocity evaluations.

    fn must be a velocity model for `path` (its score is derived through the path's schedule).
    noise_scale = 0 gives exactly the Euler ODE solution and draws no random numbers.
    """
    if diffusion not in DIFFUSIONS:
        raise ValueError(f"unknown diffusion {diffusion!r}; expected one of {list(DIFFUSIONS)}")
    if not noise_scale >= 0 or not math.isfinite(noise_scale):
        raise ValueError(f"noise_scale must be finite and >= 0, got {noise_scale}")
    check_grid(grid)
    grid = grid.to(device=x0.device, dtype=x0.dtype)
    n_steps = grid.shape[0] - 1
    x = x0
    states = [x0] if return_trajectory else None
    for i in range(n_steps):
        t0, t1 = grid[i], grid[i + 1]
        h = t1 - t0
        t = time_batch(t0, x)
        v = fn(x, t)
        if noise_scale == 0 or i == n_steps - 1:
            x = x + h * v  # same arithmetic as ode_solve's Euler step
        else:
            beta = path.coefficients(t, x).beta  # (B, 1, ...)
            eps_hat = path.velocity_to_noise(v, x, t)
            if diffusion == "beta":
                g = noise_scale * beta
                correction = -(0.5 * noise_scale**2) * beta * eps_hat
            else:
                g = torch.full_like(beta, noise_scale)
                correction = -(0.5 * noise_scale**2) / beta * eps_hat
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + h * (v + correction) + g * torch.sqrt(h) * noise
        if states is not None:
            states.append(x)
    trajectory = torch.stack(states) if states is not None else None
    return SampleOutput(x=x, trajectory=trajectory, nfe=n_steps)
