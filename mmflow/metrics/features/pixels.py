""""pixels": a weight-free image embedding for users with no weights at all.

    feats = get_features("pixels")
    v = feats(images)                       # (B, 3, H, W) in [-1, 1] -> (B, 198)

Each image becomes its 8 x 8 area-averaged RGB thumbnail (192 values, channel-major) followed by the
per-channel mean and standard deviation of the full-resolution pixels (6 values). It sees layout and
colour, nothing semantic: a Frechet distance on these features is NOT comparable to FID (or to any
published number) and only tracks drift between runs of the same data, e.g. a model's samples
moving towards or away from its training set during training.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmflow.metrics.features.base import FeatureExtractor, register_features
from mmflow.metrics.features.weights import WrongWeights

__all__ = ["PixelFeatures"]


class PixelFeatures(FeatureExtractor):
    """(B, 3, H, W) in [-1, 1] -> (B, 3 * side**2 + 6): area-downsampled thumbnail, then channel mean and std."""

    name = "pixels"
    modality = "image"

    def __init__(self, side: int = 8) -> None:
        super().__init__()
        self.side = side
        self.dim = 3 * side * side + 6

    def forward(self, media: Tensor) -> Tensor:
        x = media.float()
        thumb = F.adaptive_avg_pool2d(x, self.side).flatten(1)  # (B, 3 * side * side); area averaging
        flat = x.flatten(2)  # (B, 3, H * W)
        return torch.cat([thumb, flat.mean(-1), flat.std(-1, correction=0)], dim=1)  # (B, dim)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "side": self.side}


@register_features("pixels")
def _pixels(path: str | None = None, side: int = 8) -> PixelFeatures:
    if path:
        raise WrongWeights(f"{path}: the 'pixels' features use no weights; pass no path")
    return PixelFeatures(side)
