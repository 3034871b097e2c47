"""Images from files (Pillow) to float tensors (3, H, W) in [-1, 1], resized to cover and cropped.

Reading honours EXIF orientation (phone photos are stored sideways with a rotate tag), converts
every mode to RGB (transparency is composited on white, 16-bit grey is scaled to 8 bits) and
resizes so the image covers the target size (H, W), then crops the centre or a random window. The
crop is taken from the source image in one `resize(box=...)` call, so no pixels outside the kept
window are resampled. Random crops draw from the `torch.Generator` they are given (the dataset
seeds one per (seed, index, epoch)), never from global RNG. Unusable files raise `BadMedia`.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from mmflow.data.bad_items import BadMedia, check_file

__all__ = ["Crop", "cover_box", "image_size", "open_image", "pil_to_tensor", "rand_below", "read_image",
           "resize_crop", "to_rgb"]

Crop = Literal["center", "random"]
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_EXIF_ORIENTATION = 0x0112
# Pillow raises these for files it cannot identify or finish decoding.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def rand_below(n: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [0, n) from `generator`; 0 when there is no generator (deterministic start/centre)."""
    if n <= 1 or generator is None:
        return 0
    return int(torch.randint(n, (1,), generator=generator))


def _open(path: str | Path) -> Image.Image:
    check_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": the pixels may still be fine
            return Image.open(path)
    except _DECODE_ERRORS as exc:
        raise BadMedia("decode error", f"{type(exc).__name__}: {exc}") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) as displayed (after EXIF rotation), from the header only."""
    with _open(path) as img:
        w, h = img.size
        if img.getexif().get(_EXIF_ORIENTATION) in _ROTATED:
            w, h = h, w
    return h, w


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: alpha (RGBA, LA, P with transparency) over white, 16-bit grey scaled to 8 bits."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        a = np.asarray(img, dtype=np.float64)
        scale = 1 / 257 if img.mode != "F" else (255.0 if a.max(initial=0) <= 1 else 1.0)  # 0..65535 / 0..1 -> 0..255
        img = Image.fromarray(np.clip(np.rint(a * scale), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def open_image(path: str | Path, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode `path` to an upright RGB image; `BadMedia` if it is empty, truncated or not an image.

    `draft_size` (H, W): let JPEG decode at a reduced scale that still covers this size (much faster
    for photos far larger than the training size).
    """
    img = _open(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if draft_size is not None and img.format == "JPEG":
                w, h = img.size
                rotated = img.getexif().get(_EXIF_ORIENTATION) in _ROTATED
                dh, dw = (draft_size[1], draft_size[0]) if rotated else draft_size  # in stored orientation
                s = max(dh / h, dw / w)
                img.draft(img.mode, (math.ceil(w * s), math.ceil(h * s)))
            img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except _DECODE_ERRORS as exc:
        raise BadMedia("decode error", f"{type(exc).__name__}: {exc}") from None


def cover_box(src_hw: tuple[int, int], dst_hw: tuple[int, int], crop: Crop = "center",
              generator: torch.Generator | None = None) -> tuple[float, float, float, float]:
    """The source window (left, top, right, bottom) that, resized to `dst_hw`, covers it without distortion.

    The window has the target's aspect ratio and is as large as the source allows; "center" centres
    it, "random" places it at a uniform integer offset drawn from `generator`.
    """
    h, w = src_hw
    th, tw = dst_hw
    s = max(th / h, tw / w)  # scale at which the source just covers the target
    bw, bh = min(w, tw / s), min(h, th / s)  # window size in source pixels
    if crop == "center":
        x, y = (w - bw) / 2, (h - bh) / 2
    elif crop == "random":
        x = float(rand_below(math.floor(w - bw) + 1, generator))
        y = float(rand_below(math.floor(h - bh) + 1, generator))
    else:
        raise ValueError(f"crop must be 'center' or 'random', got {crop!r}")
    return (x, y, x + bw, y + bh)


def resize_crop(img: Image.Image, size: tuple[int, int], crop: Crop = "center",
                generator: torch.Generator | None = None,
                box: tuple[float, float, float, float] | None = None) -> Image.Image:
    """Resize to cover `size` (H, W) and crop (see `cover_box`); bicubic, antialiased when shrinking."""
    if box is None:
        box = cover_box((img.height, img.width), size, crop, generator)
    if box == (0, 0, img.width, img.height) and (img.height, img.width) == tuple(size):
        return img  # already the target: no resampling at all
    return img.resize((size[1], size[0]), Image.Resampling.BICUBIC, box=box)


def pil_to_tensor(img: Image.Image) -> Tensor:
    """RGB image -> (3, H, W) float32 in [-1, 1]."""
    a = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())  # (H, W, 3)
    return a.permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def read_image(path: str | Path, size: int | tuple[int, int], crop: Crop = "center",
               generator: torch.Generator | None = None) -> Tensor:
    """Read an image file as (3, H, W) float32 in [-1, 1]; `size` is (H, W) or one int for a square."""
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    img = open_image(path, draft_size=hw)
    return pil_to_tensor(resize_crop(img, hw, crop, generator))
