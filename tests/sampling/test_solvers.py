"""ODE solvers: exactness on polynomials, convergence order, and sampling an exact 8-gaussians flow."""

import math

import pytest
import torch

from mmflow.flow.analytic import eight_gaussians
from mmflow.flow.paths import GaussianPath
from mmflow.flow.schedules import CondOTSchedule, CosineSchedule, VPSchedule
from mmflow.sampling.grids import shifted_grid, uniform_grid
from mmflow.sampling.solvers import SOLVER_ORDER, meanflow_solve, ode_solve

EVALS_PER_STEP = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}


@pytest.mark.parametrize("method", sorted(SOLVER_ORDER))
def test_exact_on_polynomials_up_to_order(method):
    # dx/dt = (k + 1) t^k has x(1) - x(0) = 1. A method of order p integrates t^k exactly for
    # k < p (rk4 is Simpson's rule here, exact for k <= 3) and not for k = p.
    order = SOLVER_ORDER[method]
    x0 = torch.zeros(3, 2, dtype=torch.float64)
    grid = uniform_grid(3, dtype=torch.float64)
    for k in range(order + 1):
        fn = lambda x, t, k=k: ((k + 1) * t**k)[:, None].expand_as(x)  # noqa: E731
        err = (ode_solve(fn, x0, grid, method).x - 1.0).abs().max().item()
        if k < order:
            assert err < 1e-12, (method, k, err)
        else:
            assert err > 1e-4, (method, k, err)


@pytest.mark.parametrize("method", sorted(SOLVER_ORDER))
def test_nfe_trajectory_and_times(method):
    seen = []

    def fn(x, t):
        assert t.shape == (x.shape[0],) and t.dtype == x.dtype
        seen.append(t[0].item())
        return -x

    x0 = torch.randn(5, 3, 4)
    out = ode_solve(fn, x0, uniform_grid(7), method, return_trajectory=True)
    assert out.nfe == 7 * EVALS_PER_STEP[method] == len(seen)
    assert out.trajectory.shape == (8, 5, 3, 4)
    assert torch.equal(out.trajectory[0], x0) and torch.equal(out.trajectory[-1], out.x)
    assert min(seen) == 0.0 and max(seen) <= 1.0
    assert ode_solve(fn, x0, uniform_grid(7), method).trajectory is None


def test_gradients_are_not_disabled():
    x0 = torch.randn(4, 2, requires_grad=True)
    out = ode_solve(lambda x, t: -x, x0, uniform_grid(4), "heun")
    out.x.sum().backward()
    assert x0.grad is not None
    # dx/dt = -x is linear: d x(1) / d x0 is the (scalar) Heun amplification factor
    h = 0.25
    torch.testing.assert_close(x0.grad, torch.full_like(x0, (1 - h + h * h / 2) ** 4))


def test_invalid_arguments():
    fn = lambda x, t: x  # noqa: E731
    x0 = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="'dopri5'"):
        ode_solve(fn, x0, uniform_grid(3), "dopri5")
    with pytest.raises(ValueError, match="increasing"):
        ode_solve(fn, x0, uniform_grid(3).flip(0), "euler")
    with pytest.raises(ValueError, match="increasing"):
        ode_solve(fn, x0, torch.tensor([0.0, 0.5, 0.5, 1.0]), "euler")
    with pytest.raises(ValueError, match="1-D"):
        ode_solve(fn, x0, uniform_grid(3)[None], "euler")
    with pytest.raises(ValueError, match="1-D"):
        ode_solve(fn, x0, torch.tensor([0.0]), "euler")


@pytest.mark.parametrize("schedule", [CondOTSchedule(), CosineSchedule(), VPSchedule()], ids=lambda s: s.name)
def test_convergence_order(schedule):
    # smooth case (std 1.0 overlaps the components), float64: the error against a fine rk4 solve
    # from the same x0 must fall by ~2^order when the step count doubles
    gm = eight_gaussians(radius=4.0, std=1.0, dtype=torch.float64)
    path = GaussianPath(schedule)
    fn = lambda x, t: gm.velocity(x, t, path)  # noqa: E731
    x0 = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    reference = ode_solve(fn, x0, uniform_grid(300, dtype=torch.float64), "rk4").x  # error ~1e-10
    coarse_steps = {"euler": 32, "midpoint": 32, "heun": 32, "rk4": 16}
    for method, order in SOLVER_ORDER.items():
        errors = []
        for n in (coarse_steps[method], 2 * coarse_steps[method]):
            x = ode_solve(fn, x0, uniform_grid(n, dtype=torch.float64), method).x
            errors.append((x - reference).norm(dim=1).mean().item())
        ratio = errors[0] / errors[1]
        assert 0.6 * 2**order <= ratio <= 1.6 * 2**order, (schedule.name, method, errors, ratio)


@pytest.mark.parametrize("method, n_steps", [("rk4", 50), ("heun", 50), ("midpoint", 50), ("euler", 200)])
def test_samples_match_eight_gaussians(method, n_steps):
    gm = eight_gaussians(radius=4.0, std=0.5, dtype=torch.float32)  # as a model would run
    path = GaussianPath(CondOTSchedule())
    x0 = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = ode_solve(lambda x, t: gm.velocity(x, t, path), x0, uniform_grid(n_steps), method)
    assert out.nfe == n_steps * EVALS_PER_STEP[method]
    mean, cov, weights, within = gm.summarize(out.x)
    # tolerances: ~5 standard errors of 20k samples (mean sd 0.02, variance sd ~0.07)
    torch.testing.assert_close(mean, gm.mean(), rtol=0, atol=0.1)
    torch.testing.assert_close(cov, gm.covariance(), rtol=0, atol=0.35)
    assert (weights - 1 / 8).abs().max() < 0.02
    # spread around the nearest mean: E|N(0, 0.25 I_2)|^2 = 0.5
    assert within.item() == pytest.approx(0.5, abs=0.04)


def test_shifted_grid_reaches_data():
    gm = eight_gaussians(radius=4.0, std=0.5, dtype=torch.float32)
    path = GaussianPath(CondOTSchedule())
    x0 = torch.randn(5_000, 2, generator=torch.Generator().manual_seed(2))
    grid = shifted_grid(30, 3.0)
    times = []

    def fn(x, t):
        times.append(t[0].item())
        return gm.velocity(x, t, path)

    out = ode_solve(fn, x0, grid, "heun")
    assert max(times) == 1.0  # heun's last corrector stage sits on t = 1
    _, _, weights, within = gm.summarize(out.x)
    assert (weights - 1 / 8).abs().max() < 0.03
    assert within.item() == pytest.approx(0.5, abs=0.06)
    assert math.isclose(grid[-1].item(), 1.0)


@pytest.mark.parametrize("jumps", [1, 3])
def test_meanflow_jumps_are_exact_with_the_true_average_velocity(jumps):
    # dx/dt = x: the average velocity over [t, t + h] is x (e^h - 1) / h, so any number of jumps lands on e x0
    x0 = torch.randn(4, 2, dtype=torch.float64)
    fn = lambda x, t, h: x * torch.expm1(h)[:, None] / h[:, None]  # noqa: E731
    out = meanflow_solve(fn, x0, uniform_grid(jumps, dtype=torch.float64), return_trajectory=True)
    torch.testing.assert_close(out.x, math.e * x0)
    assert out.nfe == jumps and out.trajectory.shape == (jumps + 1, 4, 2)
