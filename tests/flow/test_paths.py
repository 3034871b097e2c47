"""Gaussian paths: the stable target, its time derivative, and every parameterisation round trip."""

import pytest
import torch

from mmflow.flow.paths import GaussianPath
from mmflow.flow.schedules import CondOTSchedule, CosineSchedule, VPSchedule

PATHS = [GaussianPath(s) for s in (CondOTSchedule(), CosineSchedule(), VPSchedule())]
IDS = [p.schedule.name for p in PATHS]


def _batch(shape=(12, 3, 4, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=g, dtype=torch.float64)
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.linspace(0.05, 0.95, shape[0], dtype=torch.float64)
    return z, eps, t


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_sample_is_alpha_z_plus_beta_eps(path):
    z, eps, t = _batch()
    s = path.sample(z, t, eps)
    out = path.schedule(t)
    expected = out.alpha.view(-1, 1, 1, 1) * z + out.beta.view(-1, 1, 1, 1) * eps
    torch.testing.assert_close(s.x_t, expected)
    assert s.t is t and s.z is z and s.eps is eps
    torch.testing.assert_close(s.target, path.target(z, eps, t))


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_stable_target_equals_formula_velocity(path):
    z, eps, t = _batch()
    s = path.sample(z, t, eps)
    torch.testing.assert_close(path.conditional_velocity(s.x_t, z, t), s.target, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_target_is_time_derivative_of_x_t(path):
    z, eps, t = _batch()
    # each row of x_t depends only on its own t_b, so the JVP along ones is d/dt x_t row by row
    _, dx_dt = torch.autograd.functional.jvp(lambda tt: path.sample(z, tt, eps).x_t, t, torch.ones_like(t))
    torch.testing.assert_close(path.target(z, eps, t), dx_dt, rtol=1e-10, atol=1e-10)


def test_condot_target_is_z_minus_eps():
    z, eps, t = _batch()
    torch.testing.assert_close(GaussianPath(CondOTSchedule()).target(z, eps, t), z - eps)


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_exact_velocity_converts_to_the_true_data_noise_and_score(path):
    z, eps, t = _batch()
    s = path.sample(z, t, eps)
    torch.testing.assert_close(path.velocity_to_data(s.target, s.x_t, t), z, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(path.velocity_to_noise(s.target, s.x_t, t), eps, rtol=1e-9, atol=1e-9)
    # score of the conditional p_t(x | z) = N(alpha z, beta^2 I) at x_t is -eps / beta
    beta = path.schedule(t).beta.view(-1, 1, 1, 1)
    torch.testing.assert_close(path.velocity_to_score(s.target, s.x_t, t), -eps / beta, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_round_trips_for_arbitrary_velocities(path):
    # v and x independent: the conversions are linear maps, so they must invert for any input
    z, x, t = _batch(seed=1)
    v = z
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)  # noqa: E731
    close(path.score_to_velocity(path.velocity_to_score(v, x, t), x, t), v)
    close(path.data_to_velocity(path.velocity_to_data(v, x, t), x, t), v)
    close(path.noise_to_velocity(path.velocity_to_noise(v, x, t), x, t), v)
    # and the inverse directions: data / noise / score -> velocity -> back
    close(path.velocity_to_data(path.data_to_velocity(v, x, t), x, t), v)
    close(path.velocity_to_noise(path.noise_to_velocity(v, x, t), x, t), v)
    close(path.velocity_to_score(path.score_to_velocity(v, x, t), x, t), v)


def test_condot_conversions_closed_form():
    # For CondOT: z_hat = x + (1 - t) v, eps_hat = x - t v (independent of the general 2x2 solve)
    path = GaussianPath(CondOTSchedule())
    v, x, t = _batch(shape=(7, 2))
    tc = t[:, None]
    torch.testing.assert_close(path.velocity_to_data(v, x, t), x + (1 - tc) * v)
    torch.testing.assert_close(path.velocity_to_noise(v, x, t), x - tc * v)


def test_coefficients_broadcast_and_scalar_t():
    path = GaussianPath(CosineSchedule())
    like = torch.zeros(4, 3, 8, 8)
    c = path.coefficients(torch.rand(4), like)
    assert c.alpha.shape == (4, 1, 1, 1)
    c_scalar = path.coefficients(torch.tensor(0.3), like)
    assert c_scalar.beta.shape == (4, 1, 1, 1)
    with pytest.raises(ValueError):
        path.coefficients(torch.rand(5), like)
