"""Reconstruction quality of media against the original: PSNR."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["psnr"]


def psnr(x_hat: Tensor, x: Tensor) -> Tensor:
    """Per-item PSNR in dB of media (B, C, ...) in [-1, 1], both mapped to [0, 1] (x_hat clamped): (B,)."""
    mse = ((x_hat.float().clamp(-1, 1) - x.float()) / 2).square().flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))
