"""Image grids as PNG files (Pillow only): rows of samples, e.g. one row per prompt."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw
from torch import Tensor

__all__ = ["save_image_grid", "to_uint8"]


def to_uint8(images: Tensor) -> np.ndarray:
    """Images (..., C, H, W) in [-1, 1] -> uint8 (..., H, W, C) in 0..255 (values outside are clipped)."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().numpy().astype(np.uint8)
    return np.moveaxis(x, -3, -1)


def save_image_grid(images: Tensor, path: str | Path, row_labels: Sequence[str] | None = None, scale: int = 2,
                    pad: int = 2, title: str = "") -> Path:
    """Write images (R, K, C, H, W) in [-1, 1] (C = 1 or 3) as a PNG: R rows of K images each.

    Each image is magnified `scale` times (nearest neighbour, so pixels stay visible); `row_labels`
    (R strings) and `title` are drawn in a margin at the left and at the top.
    """
    if images.ndim != 5 or images.shape[2] not in (1, 3):
        raise ValueError(f"expected images (rows, columns, C, H, W) with C = 1 or 3, got {tuple(images.shape)}")
    rows, cols, c, h, w = images.shape
    pixels = to_uint8(images)  # (R, K, H, W, C)
    cell_h, cell_w = h * scale + pad, w * scale + pad
    left = 8 + 6 * max((len(s) for s in row_labels), default=0) if row_labels else 0
    top = 14 if title else 0
    # Pillow reads a bare int colour for "RGB" as a packed value (64 -> dark red): give one value per band
    mode, grey, white = ("L", 64, 255) if c == 1 else ("RGB", (64, 64, 64), (255, 255, 255))
    canvas = Image.new(mode, (left + cols * cell_w + pad, top + rows * cell_h + pad), color=grey)
    draw = ImageDraw.Draw(canvas)
    for r in range(rows):
        for k in range(cols):
            tile = pixels[r, k, :, :, 0] if c == 1 else pixels[r, k]
            img = Image.fromarray(tile).resize((w * scale, h * scale), Image.NEAREST)
            canvas.paste(img, (left + pad + k * cell_w, top + pad + r * cell_h))
        if row_labels:
            draw.text((4, top + pad + r * cell_h + (h * scale) // 2 - 5), row_labels[r], fill=white)
    if title:
        draw.text((4, 2), title, fill=white)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
