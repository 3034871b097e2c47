from __future__ import annotations

import pytest
import torch

from mmflow.metrics.features import get_features
from mmflow.metrics.features.weights import WrongWeights


def test_thumbnail_then_colour_moments():
    feats = get_features("pixels")
    assert feats.dim == 198 and feats.describe() == {"name": "pixels", "dim": 198, "side": 8}
    # a 16 x 16 image of 2 x 2 blocks: the 8 x 8 thumbnail is the block values, exactly
    blocks = torch.rand(2, 3, 8, 8) * 2 - 1
    images = blocks.repeat_interleave(2, -1).repeat_interleave(2, -2)
    v = feats(images)
    assert v.shape == (2, 198)
    torch.testing.assert_close(v[:, :192], blocks.flatten(1))
    torch.testing.assert_close(v[:, 192:195], images.mean((2, 3)))
    torch.testing.assert_close(v[:, 195:], images.std((2, 3), correction=0))


def test_deterministic_and_size_independent_for_flat_images():
    feats = get_features("pixels")
    x = torch.rand(3, 3, 37, 53) * 2 - 1
    torch.testing.assert_close(feats(x), feats(x.clone()), atol=0, rtol=0)
    grey = torch.full((1, 3, 20, 30), 0.25)
    expected = torch.cat([torch.full((192,), 0.25), torch.full((3,), 0.25), torch.zeros(3)])
    torch.testing.assert_close(feats(grey)[0], expected)


def test_refuses_a_weights_path():
    with pytest.raises(WrongWeights, match="use no weights"):
        get_features("pixels", path="inception.pth")
