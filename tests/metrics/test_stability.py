"""Small-noise validation: amplification of maps with a known answer, and the metric names."""

import math

import pytest
import torch

from mmflow.metrics.stability import DEFAULT_SCALES, noise_stability, scale_name


def _x0(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(7))


def test_scale_names():
    assert [scale_name(s) for s in DEFAULT_SCALES] == ["1e-3", "1e-2", "1e-1"]
    assert scale_name(0.05) == "5e-2" and scale_name(1.5e-2) == "1.5e-2" and scale_name(2.0) == "2e0"


def test_identity_has_amplification_one_and_change_equal_to_the_perturbation():
    out = noise_stability(lambda x: x.clone(), _x0(16, 3, 4, 4), seed=1)
    assert set(out) == {f"stability_{k}_{n}" for k in ("amp", "rms") for n in ("1e-3", "1e-2", "1e-1")}
    for s in DEFAULT_SCALES:
        assert out[f"stability_amp_{scale_name(s)}"] == pytest.approx(1.0, rel=1e-5)
        # RMS of s * N(0, I) over 48 values per item: s, up to the sampling spread of a chi over 48 dims
        assert out[f"stability_rms_{scale_name(s)}"] == pytest.approx(s, rel=0.1)


def test_doubling_has_amplification_two_and_a_constant_shift_changes_nothing():
    x0 = _x0(8, 10)
    doubled = noise_stability(lambda x: 2 * x, x0, scales=(1e-2, 0.3))
    assert doubled["stability_amp_1e-2"] == pytest.approx(2.0, rel=1e-5)
    assert doubled["stability_amp_3e-1"] == pytest.approx(2.0, rel=1e-5)
    shifted = noise_stability(lambda x: x + 5.0, x0, scales=(0.1,))
    assert shifted["stability_amp_1e-1"] == pytest.approx(1.0, rel=1e-4)


def test_a_discontinuous_map_is_flagged_large_and_grows_as_the_scale_shrinks():
    x0 = _x0(64, 1024)
    smooth = noise_stability(torch.tanh, x0)
    # rounding to a grid of 0.25: a jump of J = 0.25 wherever an entry crosses a grid line; mean square change
    # per entry J^2 * P(cross) = J s E|n|, so amplification ~ sqrt(0.8 J / s): 14 at s = 1e-3
    jumpy = noise_stability(lambda x: torch.round(x * 4) / 4, x0)
    assert all(smooth[f"stability_amp_{scale_name(s)}"] <= 1.0 for s in DEFAULT_SCALES), smooth
    assert jumpy["stability_amp_1e-3"] > 10, jumpy
    assert jumpy["stability_amp_1e-3"] > jumpy["stability_amp_1e-2"] > jumpy["stability_amp_1e-1"], jumpy


def test_outputs_of_another_shape_and_features():
    x0 = _x0(6, 2, 5)
    # outputs: the item's values tiled twice; features: their mean (changes by the perturbation's mean)
    out = noise_stability(lambda x: x.repeat(1, 2, 1), x0, scales=(0.01,), seed=3,
                          features=lambda y: y.reshape(len(y), -1).mean(dim=1, keepdim=True))
    assert out["stability_amp_1e-2"] == pytest.approx(1.0, rel=1e-5)
    direction = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    base = x0.reshape(6, -1).mean(1).double()
    expected = (0.01 * direction.reshape(6, -1).mean(1)).double().abs().mean() / (base - base.mean()).pow(2).mean().sqrt()
    assert out["stability_feat_1e-2"] == pytest.approx(float(expected), rel=1e-4)


def test_deterministic_in_the_seed_and_non_finite_outputs_give_nan():
    x0 = _x0(4, 8)
    fn = torch.sign
    assert noise_stability(fn, x0, seed=5) == noise_stability(fn, x0, seed=5)
    assert noise_stability(fn, x0, seed=5) != noise_stability(fn, x0, seed=6)
    out = noise_stability(lambda x: x / 0.0, x0, scales=(0.1,))
    assert math.isnan(out["stability_amp_1e-1"]) and math.isnan(out["stability_rms_1e-1"])
    with pytest.raises(ValueError, match="positive"):
        noise_stability(fn, x0, scales=(0.0,))
