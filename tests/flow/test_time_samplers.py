"""Time samplers: range, parity with diffusers (t = 1 - sigma), and the shapes of the densities."""

import math

import pytest
import torch
from diffusers.training_utils import compute_density_for_timestep_sampling

from mmflow.flow.time_samplers import (
    TIME_SAMPLERS,
    CosMapTimeSampler,
    LogitNormalTimeSampler,
    ModeTimeSampler,
    UniformTimeSampler,
    get_time_sampler,
)

N = 200_000
QS = torch.tensor([0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99], dtype=torch.float64)


def _draw(sampler, n=N, seed=0):
    return sampler.sample(n, generator=torch.Generator().manual_seed(seed))


def _quantiles(t):
    return torch.quantile(t.double()[:100_000], QS)  # torch.quantile caps its input size


@pytest.mark.parametrize("name", sorted(TIME_SAMPLERS))
def test_range_shape_dtype(name):
    t = _draw(get_time_sampler(name), n=50_000)
    assert t.shape == (50_000,) and t.dtype == torch.float32
    assert (t >= 0).all() and (t <= 1).all()
    assert t.std() > 0.1  # not collapsed


@pytest.mark.parametrize(
    "sampler, kwargs",
    [
        (
            LogitNormalTimeSampler(m=0.7, s=1.3),
            dict(weighting_scheme="logit_normal", logit_mean=0.7, logit_std=1.3),
        ),
        (LogitNormalTimeSampler(), dict(weighting_scheme="logit_normal", logit_mean=0.0, logit_std=1.0)),
        (ModeTimeSampler(scale=1.29), dict(weighting_scheme="mode", mode_scale=1.29)),
        (UniformTimeSampler(), dict(weighting_scheme="none")),
    ],
    ids=["logit_normal_shifted", "logit_normal", "mode", "uniform"],
)
def test_identical_draws_to_diffusers_as_sigma(sampler, kwargs):
    ours = _draw(sampler, n=10_000, seed=3)
    theirs = compute_density_for_timestep_sampling(
        batch_size=10_000, generator=torch.Generator().manual_seed(3), **kwargs
    )
    # diffusers returns SD3's noise level sigma; mmflow returns t = 1 - sigma
    torch.testing.assert_close(ours, (1 - theirs).clamp(0, 1), rtol=0, atol=1e-6)


def test_logit_normal_quantiles_match_closed_form():
    m, s = 0.5, 0.8
    t = _draw(LogitNormalTimeSampler(m=m, s=s))
    # t = 1 - sigmoid(N(m, s^2)) = sigmoid(N(-m, s^2))
    normal_q = torch.distributions.Normal(0.0, 1.0).icdf(QS)
    expected = torch.sigmoid(-m + s * normal_q)
    torch.testing.assert_close(_quantiles(t), expected, rtol=0, atol=0.01)


def test_logit_normal_positive_m_favours_noise():
    t_pos = _draw(LogitNormalTimeSampler(m=1.0))
    t_neg = _draw(LogitNormalTimeSampler(m=-1.0))
    assert t_pos.mean() < 0.35 and t_neg.mean() > 0.65
    assert (t_pos < 0.5).float().mean() == pytest.approx(0.841, abs=0.01)  # P(N(1, 1) > 0)


def test_cosmap_quantiles_match_density():
    # density 2 / (pi (1 - 2t + 2t^2)) has CDF 1/2 + (2/pi) arctan(2t - 1)
    t = _draw(CosMapTimeSampler())
    expected = 0.5 * (1 + torch.tan(math.pi * (QS - 0.5) / 2))
    torch.testing.assert_close(_quantiles(t), expected, rtol=0, atol=0.01)


def test_mode_sampler_shapes():
    middle = lambda t: ((t > 0.25) & (t < 0.75)).float().mean().item()  # noqa: E731
    t_peaked, t_flat, t_ends = (_draw(ModeTimeSampler(scale=s)) for s in (1.29, 0.0, -0.8))
    assert middle(t_peaked) > 0.6
    assert middle(t_flat) == pytest.approx(0.5, abs=0.01)
    assert middle(t_ends) < 0.4
    for t in (t_peaked, t_flat, t_ends):  # f_mode is symmetric about 1/2
        assert t.mean().item() == pytest.approx(0.5, abs=0.005)
    torch.testing.assert_close(_quantiles(t_flat), QS, rtol=0, atol=0.01)


def test_uniform_quantiles():
    torch.testing.assert_close(_quantiles(_draw(UniformTimeSampler())), QS, rtol=0, atol=0.01)


def test_eps_clamps_endpoints():
    t = _draw(CosMapTimeSampler(eps=1e-3), n=50_000)
    assert t.min() >= 1e-3 and t.max() <= 1 - 1e-3
    # clamping only touches the tails
    t_ref = _draw(CosMapTimeSampler(), n=50_000)
    assert (t != t_ref).float().mean() < 0.005


def test_generator_reproducible():
    s = get_time_sampler("logit_normal", m=0.2)
    torch.testing.assert_close(_draw(s, 100, seed=7), _draw(s, 100, seed=7))
    assert not torch.equal(_draw(s, 100, seed=7), _draw(s, 100, seed=8))


def test_errors():
    with pytest.raises(ValueError, match="'beta'.*cosmap"):
        get_time_sampler("beta")
    for bad in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="s must"):
            LogitNormalTimeSampler(s=bad)
    with pytest.raises(ValueError, match="monotone"):
        ModeTimeSampler(scale=2.0)
    with pytest.raises(ValueError):
        UniformTimeSampler(eps=0.5)
    with pytest.raises(ValueError):
        UniformTimeSampler().sample(-1)
