"""Reconstruction quality of media against the original: PSNR, and the hue error of saturated pixels."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["hsv", "hue_error", "psnr"]

# a reconstructed pixel with no chroma at all has no hue: it is charged the mean error of a random hue
ACHROMATIC_HUE_ERROR = 90.0


def psnr(x_hat: Tensor, x: Tensor) -> Tensor:
    """Per-item PSNR in dB of media (B, C, ...) in [-1, 1], both mapped to [0, 1] (x_hat clamped): (B,)."""
    mse = ((x_hat.float().clamp(-1, 1) - x.float()) / 2).square().flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def hsv(rgb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Hue in degrees [0, 360), saturation and value in [0, 1] of RGB media (B, 3, ...) in [-1, 1]
    (clamped): three tensors (B, ...). The hexcone HSV of colorsys; hue is 0 where the pixel is grey."""
    r, g, b = ((rgb.float().clamp(-1, 1) + 1) / 2).unbind(1)  # each (B, ...) in [0, 1]
    value, _ = torch.stack([r, g, b]).max(0)
    chroma = value - torch.stack([r, g, b]).min(0).values
    c = chroma.clamp_min(1e-12)  # the hue of a grey pixel is 0 below (every numerator is 0 there)
    hue = torch.where(value == r, ((g - b) / c) % 6,
                      torch.where(value == g, (b - r) / c + 2, (r - g) / c + 4)) * 60.0
    saturation = torch.where(value > 0, chroma / value.clamp_min(1e-12), torch.zeros_like(value))
    return hue % 360.0, saturation, value


def hue_error(original: Tensor, reconstruction: Tensor, min_saturation: float = 0.3, min_value: float = 0.2) -> float:
    """Mean absolute hue difference in degrees (circular: 0..180) between RGB media (B, 3, ...) in [-1, 1],
    over the pixels of `original` with HSV saturation >= min_saturation and value >= min_value.

    Greys and dark pixels of the original have no reliable hue and are left out; a reconstructed pixel
    that lost all chroma (exactly grey) counts ACHROMATIC_HUE_ERROR (90, a random hue's mean error).
    NaN when no pixel of the original qualifies.
    """
    if original.shape != reconstruction.shape or original.shape[1] != 3:
        raise ValueError(f"hue_error needs two RGB media (B, 3, ...) of one shape, got {tuple(original.shape)} "
                         f"and {tuple(reconstruction.shape)}")
    hue, saturation, value = hsv(original)
    hue_hat, saturation_hat, _ = hsv(reconstruction)
    diff = (hue - hue_hat).abs() % 360.0
    diff = torch.minimum(diff, 360.0 - diff)  # the shorter way round the colour wheel
    diff = torch.where(saturation_hat > 0, diff, torch.full_like(diff, ACHROMATIC_HUE_ERROR))
    keep = (saturation >= min_saturation) & (value >= min_value)
    return float(diff[keep].mean()) if bool(keep.any()) else float("nan")
