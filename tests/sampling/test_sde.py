"""SDE sampler: reduces to Euler at zero noise and keeps the marginals of an exact 8-gaussians flow."""

import pytest
import torch

from mmflow.flow.analytic import eight_gaussians
from mmflow.flow.paths import GaussianPath
from mmflow.flow.schedules import CondOTSchedule, CosineSchedule, VPSchedule
from mmflow.sampling.grids import uniform_grid
from mmflow.sampling.sde import sde_solve
from mmflow.sampling.solvers import ode_solve


@pytest.mark.parametrize("diffusion", ["beta", "constant"])
def test_zero_noise_is_exactly_euler(diffusion):
    gm = eight_gaussians(dtype=torch.float32)
    path = GaussianPath(CosineSchedule())
    fn = lambda x, t: gm.velocity(x, t, path)  # noqa: E731
    x0 = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
    grid = uniform_grid(40)
    ode = ode_solve(fn, x0, grid, "euler", return_trajectory=True)
    sde = sde_solve(fn, x0, grid, path, noise_scale=0.0, diffusion=diffusion, return_trajectory=True)
    assert torch.equal(sde.x, ode.x) and torch.equal(sde.trajectory, ode.trajectory)
    assert sde.nfe == ode.nfe == 40


@pytest.mark.parametrize(
    "schedule, diffusion, noise_scale",
    [(CondOTSchedule(), "beta", 1.0), (CosineSchedule(), "beta", 1.0), (VPSchedule(), "constant", 1.0)],
    ids=["condot-beta", "cosine-beta", "vp-constant"],
)
def test_stochastic_samples_match_eight_gaussians(schedule, diffusion, noise_scale):
    gm = eight_gaussians(radius=4.0, std=0.5, dtype=torch.float32)
    path = GaussianPath(schedule)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(10_000, 2, generator=g)
    out = sde_solve(
        lambda x, t: gm.velocity(x, t, path), x0, uniform_grid(500), path, noise_scale, diffusion, generator=g
    )
    assert out.nfe == 500 and torch.isfinite(out.x).all()
    mean, cov, weights, within = gm.summarize(out.x)
    # ~5 standard errors of 10k samples: mean sd 0.03, variance sd ~0.1
    torch.testing.assert_close(mean, gm.mean(), rtol=0, atol=0.15)
    torch.testing.assert_close(cov, gm.covariance(), rtol=0, atol=0.5)
    assert (weights - 1 / 8).abs().max() < 0.02
    assert within.item() == pytest.approx(0.5, abs=0.05)


def test_noise_actually_changes_the_paths_but_not_the_distribution():
    # same x0, different Brownian paths: individual samples move (often to another mode), the
    # mode weights do not; a correction with the wrong sign would also move the weights/spread
    gm = eight_gaussians(radius=4.0, std=0.5, dtype=torch.float32)
    path = GaussianPath(CondOTSchedule())
    fn = lambda x, t: gm.velocity(x, t, path)  # noqa: E731
    x0 = torch.randn(4_000, 2, generator=torch.Generator().manual_seed(2))
    grid = uniform_grid(200)
    ode = ode_solve(fn, x0, grid, "euler").x
    sde = sde_solve(fn, x0, grid, path, 2.0, generator=torch.Generator().manual_seed(3)).x
    same_mode = (torch.cdist(ode, gm.means).argmin(1) == torch.cdist(sde, gm.means).argmin(1)).float().mean()
    assert same_mode < 0.9
    _, _, weights, within = gm.summarize(sde)
    assert (weights - 1 / 8).abs().max() < 0.03
    assert within.item() == pytest.approx(0.5, abs=0.06)


def test_generator_reproducible_and_validation():
    gm = eight_gaussians(dtype=torch.float32)
    path = GaussianPath(CondOTSchedule())
    fn = lambda x, t: gm.velocity(x, t, path)  # noqa: E731
    x0 = torch.randn(50, 2)
    def run(seed):
        return sde_solve(fn, x0, uniform_grid(10), path, generator=torch.Generator().manual_seed(seed)).x

    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))
    with pytest.raises(ValueError, match="'linear'"):
        sde_solve(fn, x0, uniform_grid(10), path, diffusion="linear")
    with pytest.raises(ValueError):
        sde_solve(fn, x0, uniform_grid(10), path, noise_scale=-1.0)
    with pytest.raises(ValueError):
        sde_solve(fn, x0, uniform_grid(10).flip(0), path)
