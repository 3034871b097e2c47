"""Tests for mmflow/metrics/reconstruction.py: PSNR per item, on [-1, 1] media mapped to [0, 1]."""

from __future__ import annotations

import math

import torch

from mmflow.metrics.reconstruction import psnr


def test_psnr_per_item_on_the_unit_range_with_clamping() -> None:
    x = torch.zeros(2, 3, 4, 4)
    x_hat = torch.stack([torch.full((3, 4, 4), 0.2), torch.full((3, 4, 4), 5.0)])  # the second is clamped to 1
    # errors 0.2 and 1.0 on [-1, 1] are 0.1 and 0.5 on [0, 1]: PSNR = -10 log10(mse)
    assert torch.allclose(psnr(x_hat, x), torch.tensor([-10 * math.log10(0.01), -10 * math.log10(0.25)]))
    assert psnr(x, x).shape == (2,) and torch.isfinite(psnr(x, x)).all()  # a perfect match stays finite
