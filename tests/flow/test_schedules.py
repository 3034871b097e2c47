"""Schedules: boundary values, closed-form derivatives against autograd, variance preservation."""

import math

import pytest
import torch

from mmflow.flow.schedules import (
    SCHEDULES,
    CondOTSchedule,
    CosineSchedule,
    VPSchedule,
    get_schedule,
)

ALL = [CondOTSchedule(), CosineSchedule(), VPSchedule()]
T_INTERIOR = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)


@pytest.mark.parametrize("schedule", [CondOTSchedule(), CosineSchedule()], ids=lambda s: s.name)
def test_exact_boundary_values(schedule):
    out = schedule(torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(out.alpha, torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(out.beta, torch.tensor([1.0, 0.0], dtype=torch.float64))


def test_vp_boundary_values_are_approximate_at_t0():
    out = VPSchedule()(torch.tensor([0.0, 1.0], dtype=torch.float64))
    # alpha_0 = exp(-(0.1 + 19.9 / 2) / 2) = exp(-5.025): close to, but not, 0.
    assert out.alpha[0].item() == pytest.approx(math.exp(-5.025), rel=1e-12)
    assert 0.006 < out.alpha[0].item() < 0.007
    assert out.beta[0].item() == pytest.approx(math.sqrt(1 - math.exp(-10.05)), rel=1e-12)
    assert out.alpha[1].item() == 1.0 and out.beta[1].item() == 0.0


@pytest.mark.parametrize("schedule", ALL, ids=lambda s: s.name)
def test_derivatives_match_autograd(schedule):
    t = T_INTERIOR.clone().requires_grad_(True)
    out = schedule(t)
    (d_alpha,) = torch.autograd.grad(out.alpha.sum(), t, retain_graph=True)
    (d_beta,) = torch.autograd.grad(out.beta.sum(), t)
    torch.testing.assert_close(out.d_alpha.detach(), d_alpha, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.d_beta.detach(), d_beta, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("schedule", ALL, ids=lambda s: s.name)
def test_beta_d_beta_is_half_derivative_of_beta_squared(schedule):
    t = T_INTERIOR.clone().requires_grad_(True)
    (half_grad,) = torch.autograd.grad((0.5 * schedule(t).beta ** 2).sum(), t)
    torch.testing.assert_close(schedule.beta_d_beta(t).detach(), half_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("schedule", [CosineSchedule(), VPSchedule()], ids=lambda s: s.name)
def test_variance_preserving(schedule):
    out = schedule(torch.linspace(0, 1, 101, dtype=torch.float64))
    torch.testing.assert_close(out.alpha**2 + out.beta**2, torch.ones(101, dtype=torch.float64))


def test_condot_is_not_variance_preserving():
    # guards the previous test against a vacuous implementation
    out = CondOTSchedule()(torch.tensor([0.5]))
    assert (out.alpha**2 + out.beta**2).item() == pytest.approx(0.5)


@pytest.mark.parametrize("schedule", ALL, ids=lambda s: s.name)
def test_monotone_and_shapes(schedule):
    t = torch.linspace(0, 1, 201).view(3, 67)
    out = schedule(t)
    for field in (out.alpha, out.beta, out.d_alpha, out.d_beta):
        assert field.shape == t.shape
    assert (out.alpha.flatten().diff() >= 0).all() and (out.beta.flatten().diff() <= 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_vp_finite_up_to_and_at_one(dtype):
    t = torch.cat([torch.linspace(0, 1, 1001, dtype=dtype), 1 - torch.logspace(-12, -1, 50, dtype=dtype)])
    out = VPSchedule()(t)
    for field in (out.alpha, out.beta, out.d_alpha, out.d_beta):
        assert torch.isfinite(field).all()
    # beta' really diverges like -sqrt(beta_min / (1 - t)) / 2 near t = 1, and its guard keeps t = 1 finite
    near = torch.tensor([1 - 1e-4], dtype=torch.float64)
    assert VPSchedule()(near).d_beta.item() == pytest.approx(-0.5 * math.sqrt(0.1 / 1e-4), rel=3e-2)


def test_registry_and_errors():
    assert set(SCHEDULES) == {"condot", "cosine", "vp"}
    assert isinstance(get_schedule("vp", beta_min=0.2), VPSchedule)
    assert get_schedule("vp", beta_min=0.2).beta_min == 0.2
    with pytest.raises(ValueError, match=r"'linear'.*condot"):
        get_schedule("linear")
    with pytest.raises(ValueError):
        VPSchedule(beta_min=0.0)
