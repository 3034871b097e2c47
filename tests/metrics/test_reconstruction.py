"""Tests for mmflow/metrics/reconstruction.py: PSNR per item, on [-1, 1] media mapped to [0, 1]; the hue
error of saturated pixels."""

from __future__ import annotations

import colorsys
import math

import pytest
import torch

from mmflow.metrics.reconstruction import ACHROMATIC_HUE_ERROR, hsv, hue_error, psnr


def test_psnr_per_item_on_the_unit_range_with_clamping() -> None:
    x = torch.zeros(2, 3, 4, 4)
    x_hat = torch.stack([torch.full((3, 4, 4), 0.2), torch.full((3, 4, 4), 5.0)])  # the second is clamped to 1
    # errors 0.2 and 1.0 on [-1, 1] are 0.1 and 0.5 on [0, 1]: PSNR = -10 log10(mse)
    assert torch.allclose(psnr(x_hat, x), torch.tensor([-10 * math.log10(0.01), -10 * math.log10(0.25)]))
    assert psnr(x, x).shape == (2,) and torch.isfinite(psnr(x, x)).all()  # a perfect match stays finite


def pixels(hues: list[float], s: float = 0.8, v: float = 0.9) -> torch.Tensor:
    """RGB pixels of the given hues (degrees) as media (1, 3, 1, len(hues)) in [-1, 1]."""
    rgb = [colorsys.hsv_to_rgb((h % 360) / 360, s, v) for h in hues]
    return torch.tensor(rgb, dtype=torch.float64).T.reshape(1, 3, 1, len(hues)).float() * 2 - 1


def test_hsv_matches_colorsys() -> None:
    x = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0)) * 2 - 1
    hue, sat, val = hsv(x)
    for i, j, k in [(0, 0, 0), (0, 4, 6), (1, 2, 3), (1, 3, 1)]:
        h, s, v = colorsys.rgb_to_hsv(*((x[i, :, j, k] + 1) / 2).tolist())
        assert (float(hue[i, j, k]), float(sat[i, j, k]), float(val[i, j, k])) == pytest.approx((h * 360, s, v), abs=1e-4)


def test_hue_error_of_known_rotations() -> None:
    hues = [0.0, 45.0, 120.0, 200.0, 290.0]
    x = pixels(hues)
    assert hue_error(x, x) == pytest.approx(0.0, abs=1e-4)
    assert hue_error(x, pixels([h + 30 for h in hues])) == pytest.approx(30.0, abs=1e-3)
    assert hue_error(x, pixels([h - 30 for h in hues], s=0.5, v=0.6)) == pytest.approx(30.0, abs=1e-3)  # hue only
    assert hue_error(pixels([350.0]), pixels([10.0])) == pytest.approx(20.0, abs=1e-3)  # round the wheel, not 340
    assert hue_error(pixels([0.0]), pixels([180.0])) == pytest.approx(180.0, abs=1e-3)  # the most there is


def test_hue_error_ignores_grey_and_dark_originals_and_charges_lost_colour() -> None:
    coloured = pixels([100.0, 100.0])
    grey_and_dark = torch.cat([torch.full((1, 3, 1, 1), 0.3), pixels([250.0], v=0.1)], dim=3)  # (1, 3, 1, 2)
    x = torch.cat([coloured, grey_and_dark], dim=3)
    x_hat = torch.cat([pixels([110.0, 110.0]), pixels([0.0, 0.0])], dim=3)  # the greys come back red: not counted
    assert hue_error(x, x_hat) == pytest.approx(10.0, abs=1e-3)
    assert math.isnan(hue_error(grey_and_dark, pixels([0.0, 0.0])))  # nothing qualifies
    greyed = torch.cat([pixels([110.0]), torch.zeros(1, 3, 1, 1)], dim=3)  # a purple-comes-back-grey pixel
    assert hue_error(coloured, greyed) == pytest.approx((10.0 + ACHROMATIC_HUE_ERROR) / 2, abs=1e-3)
    with pytest.raises(ValueError, match="RGB"):
        hue_error(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
