"""CFM loss, its robust variants (l1, pseudo-Huber), SD3 weightings (parity with diffusers) and the per-t-bin
statistics."""

import math

import pytest
import torch
from diffusers.training_utils import compute_loss_weighting_for_sd3

from mmflow.config import ConfigError
from mmflow.flow.loss import DEFAULT_HUBER_C, LOSSES, TBinStats, cfm_loss, loss_weight, residual_loss


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


def test_l1_and_pseudo_huber_on_a_hand_case():
    # residuals per example: [3, 4] (RMS^2 = 12.5), [0, 0], [-1, 1]
    pred = torch.tensor([[3.0, 4.0], [0.0, 0.0], [-1.0, 1.0]])
    target = torch.zeros(3, 2)
    t = torch.tensor([0.2, 0.5, 0.8])
    torch.testing.assert_close(cfm_loss(pred, target, t, loss="l1").per_example, torch.tensor([3.5, 0.0, 1.0]))
    huber = cfm_loss(pred, target, t, loss="pseudo_huber", huber_c=0.5).per_example
    expected = torch.tensor([math.sqrt(12.5 + 0.25) - 0.5, 0.0, math.sqrt(1.25) - 0.5])
    torch.testing.assert_close(huber, expected)
    assert cfm_loss(pred, target, t, loss="pseudo_huber", huber_c=0.5).loss.item() == pytest.approx(expected.mean().item())


def test_pseudo_huber_is_l2_over_2c_for_small_residuals_and_rms_for_large():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(4, 3, 8, 8, generator=g)
    mse, rms = r.pow(2).mean((1, 2, 3)), r.pow(2).mean((1, 2, 3)).sqrt()
    c = DEFAULT_HUBER_C
    small = residual_loss(1e-6 * r, "pseudo_huber", c)  # residual RMS ~ 1e-6 << c
    torch.testing.assert_close(small, 1e-12 * mse / (2 * c), rtol=1e-4, atol=0)
    large = residual_loss(r, "pseudo_huber", c)  # RMS ~ 1 >> c: RMS - c, within c^2 / (2 RMS)
    torch.testing.assert_close(large, rms - c, rtol=1e-5, atol=0)
    # on a flat residual (all entries equal) RMS = mean |r|: pseudo-Huber tends to l1 there
    flat = torch.full((2, 16), 3.0)
    torch.testing.assert_close(residual_loss(flat, "pseudo_huber", 1e-4), residual_loss(flat, "l1"), rtol=1e-4, atol=0)


def test_pseudo_huber_has_no_cancellation_far_below_c():
    # the naive sqrt(mse + c^2) - c in float32 would give 0 or noise here
    r = torch.full((1, 4), 1e-7)
    assert residual_loss(r, "pseudo_huber", 1e-3).item() == pytest.approx(1e-14 / 2e-3, rel=1e-5)


def test_l2_default_is_unchanged():
    g = torch.Generator().manual_seed(1)
    pred, target, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g), torch.rand(5, generator=g)
    out, explicit = cfm_loss(pred, target, t, "cosmap"), cfm_loss(pred, target, t, "cosmap", "l2", 0.3)
    assert torch.equal(out.loss, explicit.loss) and torch.equal(out.per_example, ((pred - target) ** 2).mean(1))


@pytest.mark.parametrize("loss", ["l1", "pseudo_huber"])
@pytest.mark.parametrize("weighting", ["sigma_sqrt", "cosmap"])
def test_robust_losses_combine_with_weightings(loss, weighting):
    g = torch.Generator().manual_seed(2)
    pred = torch.randn(6, 3, 4, generator=g, requires_grad=True)
    target, t = torch.randn(6, 3, 4, generator=g), torch.rand(6, generator=g)
    out = cfm_loss(pred, target, t, weighting, loss, 0.1)
    per_example = residual_loss(pred.detach() - target, loss, 0.1)
    torch.testing.assert_close(out.per_example.detach(), per_example)  # logged unweighted
    torch.testing.assert_close(out.loss.detach(), (loss_weight(t, weighting) * per_example).mean())
    out.loss.backward()
    assert torch.isfinite(pred.grad).all()


def test_unknown_loss_and_bad_huber_c():
    with pytest.raises(ValueError, match=r"'huber'.*\['l2', 'l1', 'pseudo_huber'\]"):
        cfm_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.rand(2), loss="huber")
    with pytest.raises(ValueError, match="huber_c must be > 0"):
        residual_loss(torch.zeros(2, 3), "pseudo_huber", 0.0)


def test_recipe_validates_loss_and_huber_c(make_toy_recipe):
    recipe = make_toy_recipe("flow.loss=pseudo_huber", "flow.huber_c=0.01", "flow.loss_weighting=cosmap")
    assert (recipe.flow.loss, recipe.flow.huber_c, recipe.flow.loss_weighting) == ("pseudo_huber", 0.01, "cosmap")
    assert make_toy_recipe().flow.loss == "l2" and make_toy_recipe().flow.huber_c == DEFAULT_HUBER_C
    with pytest.raises(ConfigError, match=r"flow\.loss: 'huber' is not one of .*'l2'.*'l1'.*'pseudo_huber'"):
        make_toy_recipe("flow.loss=huber")
    for bad in ("0", "-0.1"):
        with pytest.raises(ConfigError, match=r"flow\.huber_c: .*> 0"):
            make_toy_recipe(f"flow.huber_c={bad}")


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


@pytest.mark.parametrize("loss", LOSSES)
def test_masked_loss_is_the_loss_of_the_real_elements_only(loss) -> None:
    # a 1-frame image padded to a 3-frame clip (joint image+video batches) scores as the image alone
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 4, 3, 2, 2, generator=g), torch.randn(2, 4, 3, 2, 2, generator=g)
    t = torch.rand(2, generator=g)
    frames = torch.tensor([3, 1])
    mask = (torch.arange(3)[None] < frames[:, None])[:, None, :, None, None]  # (B, 1, T, 1, 1)
    out = cfm_loss(pred, target, t, loss=loss, mask=mask).per_example
    assert torch.allclose(out[0], cfm_loss(pred[:1], target[:1], t[:1], loss=loss).per_example[0])
    assert torch.allclose(out[1], cfm_loss(pred[1:, :, :1], target[1:, :, :1], t[1:], loss=loss).per_example[0])
    pred[1, :, 1:] = 1e6  # padding does not reach the loss
    assert torch.allclose(cfm_loss(pred, target, t, loss=loss, mask=mask).per_example, out)
    with pytest.raises(ValueError, match="no element"):
        cfm_loss(pred, target, t, loss=loss, mask=torch.zeros(2, 1, 3, 1, 1, dtype=torch.bool))
