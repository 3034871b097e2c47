"""CFM loss, SD3 weightings (parity with diffusers) and the per-t-bin statistics."""

import math

import pytest
import torch
from diffusers.training_utils import compute_loss_weighting_for_sd3

from mmflow.flow.loss import TBinStats, cfm_loss, loss_weight


def test_zero_when_pred_equals_target():
    target = torch.randn(5, 3, 8, 8)
    for weighting in ("none", "sigma_sqrt", "cosmap"):
        out = cfm_loss(target.clone(), target, torch.rand(5), weighting)
        assert out.loss.item() == 0.0 and (out.per_example == 0).all()


def test_per_example_is_mean_over_non_batch_dims():
    pred = torch.zeros(3, 2, 4)
    target = torch.zeros(3, 2, 4)
    target[0] = 1.0  # mse 1
    target[1, 0, 0] = 4.0  # mse 16 / 8 = 2
    out = cfm_loss(pred, target, torch.tensor([0.1, 0.5, 0.9]))
    torch.testing.assert_close(out.per_example, torch.tensor([1.0, 2.0, 0.0]))
    assert out.loss.item() == pytest.approx(1.0)


def test_weighted_loss_is_mean_of_weight_times_mse():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    t = torch.rand(6, generator=g)
    out = cfm_loss(pred, target, t, "cosmap")
    mse = ((pred - target) ** 2).mean(1)
    sigma = 1 - t
    manual = (2 / (math.pi * (1 - 2 * sigma + 2 * sigma**2)) * mse).mean()
    torch.testing.assert_close(out.loss, manual)
    torch.testing.assert_close(out.per_example, mse)  # unweighted


def test_loss_backpropagates():
    pred = torch.randn(4, 3, requires_grad=True)
    cfm_loss(pred, torch.zeros(4, 3), torch.rand(4), "sigma_sqrt").loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()


def test_bf16_prediction_is_reduced_in_float32():
    pred, target = torch.ones(2, 3, dtype=torch.bfloat16), torch.zeros(2, 3, dtype=torch.bfloat16)
    out = cfm_loss(pred, target, torch.rand(2))
    assert out.loss.dtype == torch.float32


@pytest.mark.parametrize("weighting", ["none", "sigma_sqrt", "cosmap"])
def test_weighting_parity_with_diffusers(weighting):
    # diffusers' training sigmas live in [1/1000, 1]; float64 so that 1 - (1 - sigma) == sigma
    g = torch.Generator().manual_seed(0)
    random = torch.rand(1000, generator=g).clamp_min(1e-3)
    sigmas = torch.cat([torch.linspace(1e-3, 1.0, 1000), random]).double()
    ours = loss_weight(1 - sigmas, weighting)
    theirs = compute_loss_weighting_for_sd3(weighting, sigmas=sigmas)
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=1e-6, atol=0)


def test_weights_are_finite_at_the_endpoints():
    t = torch.tensor([0.0, 1.0])
    for weighting in ("none", "sigma_sqrt", "cosmap"):
        assert torch.isfinite(loss_weight(t, weighting)).all()
    assert loss_weight(torch.tensor([1.0]), "sigma_sqrt").item() == pytest.approx(1e6)
    # cosmap weight is the cosmap density: symmetric, 4/pi at t = 1/2, 2/pi at the ends
    expected = torch.tensor([2 / math.pi, 4 / math.pi, 2 / math.pi])
    torch.testing.assert_close(loss_weight(torch.tensor([0.0, 0.5, 1.0]), "cosmap"), expected)


def test_unknown_weighting():
    with pytest.raises(ValueError, match="'logit'"):
        loss_weight(torch.rand(3), "logit")
    with pytest.raises(ValueError):
        cfm_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.rand(2))


def test_tbin_stats_hand_example():
    stats = TBinStats(n_bins=4)
    torch.testing.assert_close(stats.edges, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    stats.update(torch.tensor([1.0, 3.0, 10.0]), torch.tensor([0.0, 0.2, 0.6]))
    # 0.25 opens bin 1; t = 1 belongs to the last bin
    stats.update(torch.tensor([5.0, 7.0]), torch.tensor([0.25, 1.0]))
    assert stats.counts.tolist() == [2, 1, 1, 1]
    means = stats.means()
    assert means.tolist() == [2.0, 5.0, 10.0, 7.0]
    stats.reset()
    assert torch.isnan(stats.means()).all() and stats.counts.sum() == 0


def test_tbin_stats_empty_bins_are_nan_and_accepts_grad_tensors():
    stats = TBinStats(n_bins=3)
    values = torch.tensor([2.0, 4.0], requires_grad=True)
    stats.update(values * 1, torch.tensor([0.9, 0.95]))
    means = stats.means()
    assert torch.isnan(means[:2]).all() and means[2].item() == 3.0
