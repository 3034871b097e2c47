"""Analytic Gaussian-mixture paths: continuity equation, score identities, CFM optimality."""

import math

import pytest
import torch

from mmflow.flow.analytic import GaussianMixture, eight_gaussians
from mmflow.flow.paths import GaussianPath
from mmflow.flow.schedules import CondOTSchedule, CosineSchedule, VPSchedule

PATHS = [GaussianPath(s) for s in (CondOTSchedule(), CosineSchedule(), VPSchedule())]
IDS = [p.schedule.name for p in PATHS]


def _uneven_mixture() -> GaussianMixture:
    """3 components in 2-D with different stds and weights, so no symmetry hides a bug."""
    means = torch.tensor([[2.0, 0.5], [-1.5, 1.0], [0.0, -2.5]], dtype=torch.float64)
    stds = torch.tensor([0.4, 0.8, 0.6], dtype=torch.float64)
    return GaussianMixture(means, stds, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))


def _points(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 3.0 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = 0.05 + 0.9 * torch.rand(n, generator=g, dtype=torch.float64)
    return x, t


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_velocity_satisfies_continuity_equation(path):
    # d/dt log p_t + div u + u . grad log p_t = 0  <=>  d/dt p_t = -div(p_t u)
    gm = _uneven_mixture()
    x, t = _points()
    x.requires_grad_(True)
    t.requires_grad_(True)
    log_p = gm.log_prob(x, t, path)
    dlogp_dt, grad_logp = torch.autograd.grad(log_p.sum(), (t, x))
    u = gm.velocity(x, t, path)
    div_u = sum(torch.autograd.grad(u[:, j].sum(), x, retain_graph=True)[0][:, j] for j in range(2))
    residual = dlogp_dt + div_u + (u * grad_logp).sum(1)
    scale = dlogp_dt.abs() + div_u.abs() + (u * grad_logp).sum(1).abs()
    assert scale.min() > 1e-3  # the identity is not trivially 0 = 0
    torch.testing.assert_close(residual, torch.zeros_like(residual), rtol=0, atol=1e-9)
    # a slightly wrong velocity (u + 0.1, same divergence) breaks it
    bad = dlogp_dt + div_u + ((u + 0.1) * grad_logp).sum(1)
    assert bad.abs().max() > 1e-2


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_score_is_gradient_of_log_prob_and_matches_velocity_conversion(path):
    gm = _uneven_mixture()
    x, t = _points(seed=1)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(gm.log_prob(x, t, path).sum(), x)
    score = gm.score(x, t, path)
    torch.testing.assert_close(score, grad, rtol=1e-10, atol=1e-10)
    # marginal velocity and score are related by the same linear map as conditional ones
    from_velocity = path.velocity_to_score(gm.velocity(x, t, path), x, t)
    torch.testing.assert_close(from_velocity, score, rtol=1e-8, atol=1e-8)


def test_marginal_endpoints_and_log_prob_at_noise():
    gm = _uneven_mixture()
    path = GaussianPath(CondOTSchedule())
    m1 = gm.marginal(1.0, path)
    torch.testing.assert_close(m1.means, gm.means)
    torch.testing.assert_close(m1.vars, gm.stds**2)
    m0 = gm.marginal(torch.tensor([0.0, 0.0], dtype=torch.float64), path)
    assert m0.means.shape == (2, 3, 2) and m0.vars.shape == (2, 3)
    assert (m0.means == 0).all() and (m0.vars == 1).all()
    x = torch.randn(10, 2, dtype=torch.float64)
    expected = -0.5 * (x**2).sum(1) - math.log(2 * math.pi)
    torch.testing.assert_close(gm.log_prob(x, 0.0, path), expected)


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_velocity_is_the_cfm_minimiser(path):
    # u_t(x) = E[target | x_t = x] means the residual target - u is orthogonal to every f(x_t, t)
    gm = _uneven_mixture()
    g = torch.Generator().manual_seed(2)
    n = 200_000
    z, _ = gm.sample(n, generator=g)
    eps = torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = 0.05 + 0.9 * torch.rand(n, generator=g, dtype=torch.float64)
    s = path.sample(z, t, eps)
    resid = s.target - gm.velocity(s.x_t, t, path)  # (n, 2)
    x0, x1 = s.x_t[:, 0], s.x_t[:, 1]
    features = torch.stack([torch.ones_like(t), x0, x1, t, x0 * x1], 1)  # (n, 5) test functions f
    moments = features.T @ resid / n  # (5, 2), each ~ N(0, sd^2 / n)
    stderr = (features[:, :, None] * resid[:, None, :]).std(0) / math.sqrt(n)
    assert (moments.abs() < 5 * stderr).all(), moments / stderr
    # the same test rejects the conditional-free guess u = E[target] (no dependence on x)
    wrong = s.target - s.target.mean(0)
    wrong_moments = features.T @ wrong / n
    assert (wrong_moments.abs() > 5 * stderr).any()


def test_velocity_finite_and_continuous_at_t1_for_vp():
    gm = _uneven_mixture()
    path = GaussianPath(VPSchedule())
    x, _ = _points(seed=3)
    at_one = gm.velocity(x, 1.0, path)
    near_one = gm.velocity(x, 1 - 1e-9, path)
    assert torch.isfinite(at_one).all()
    torch.testing.assert_close(at_one, near_one, rtol=1e-5, atol=1e-5)


def test_condot_velocity_at_t1_is_identity():
    # at t = 1, x = z and eps is independent of it: u = E[z - eps | x] = x
    gm = _uneven_mixture()
    x, _ = _points(seed=4)
    torch.testing.assert_close(gm.velocity(x, 1.0, GaussianPath(CondOTSchedule())), x)


def test_sampling_and_moments():
    gm = eight_gaussians(radius=4.0, std=0.5, dtype=torch.float64)
    assert gm.means.shape == (8, 2)
    torch.testing.assert_close(gm.means.norm(dim=1), torch.full((8,), 4.0, dtype=torch.float64))
    x, comp = gm.sample(50_000, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(comp, minlength=8) / 50_000
    assert (counts - 1 / 8).abs().max() < 0.01
    torch.testing.assert_close(x.mean(0), gm.mean(), rtol=0, atol=0.05)
    torch.testing.assert_close(torch.cov(x.T), gm.covariance(), rtol=0, atol=0.2)
    torch.testing.assert_close(gm.covariance(), 8.25 * torch.eye(2, dtype=torch.float64))  # r^2/2 + s^2


def test_invalid_mixtures():
    with pytest.raises(ValueError):
        GaussianMixture(torch.zeros(2, 2), torch.tensor([1.0, 0.0]), torch.ones(2))
    with pytest.raises(ValueError):
        GaussianMixture(torch.zeros(2, 2), torch.ones(3), torch.ones(2))
