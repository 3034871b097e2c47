"""Resizing shared by extractors whose networks want a fixed input side (CLIP, I3D), done in torch.

    x = resize_center_crop(images, shortest=224, crop=(224, 224), mode="bicubic")   # (B, C, 224, 224)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["resize_center_crop"]


def resize_center_crop(x: Tensor, shortest: int | None, crop: tuple[int, int] | None, mode: str = "bicubic",
                       antialias: bool = True) -> Tensor:
    """(B, C, H, W) -> the shorter side resized to `shortest` (aspect kept, the longer side floored as HF's
    image processors do), then the centre `crop` (height, width), zero-padded where the image is smaller, as
    HF's center_crop does; None skips that step. Antialias applies only when shrinking."""
    h, w = x.shape[-2:]
    if shortest is not None and min(h, w) != shortest:
        size = (shortest, w * shortest // h) if h <= w else (h * shortest // w, shortest)
        aa = antialias and shortest < min(h, w) and mode in ("bilinear", "bicubic")
        x = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=aa)
    if crop is not None:
        ch, cw = crop
        ph, pw = max(ch - x.shape[-2], 0), max(cw - x.shape[-1], 0)
        if ph or pw:
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        top, left = (x.shape[-2] - ch) // 2, (x.shape[-1] - cw) // 2
        x = x[..., top: top + ch, left: left + cw]
    return x
