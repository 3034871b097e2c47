"""1-D blocks of the waveform VAE (DAC / Stable Audio style): Snake, residual units, strided blocks, and the
Vocos inverse-STFT output head.

Shapes: (B, C, N) throughout (channels, samples).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm as _weight_norm


def conv1d(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1,
           padding: int | None = None, weight_norm: bool = True) -> nn.Conv1d:
    """Conv1d with "same" padding for stride 1 by default, optionally weight-normalised (DAC)."""
    if padding is None:
        padding = dilation * (kernel_size - 1) // 2
    conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation, padding=padding)
    return _weight_norm(conv) if weight_norm else conv


class Snake1d(nn.Module):
    """Snake activation x + 1/alpha * sin^2(alpha x), with a learnable alpha per channel.

    Periodic, so it suits waveforms better than ReLU-like units (Ziyin et al. 2020; DAC, BigVGAN).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        # the 1e-9 keeps 1/alpha finite if an alpha is driven to zero
        return x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)


class ResidualUnit(nn.Module):
    """Snake -> dilated conv (k=7) -> Snake -> conv (k=1), plus the input."""

    def __init__(self, channels: int, dilation: int, weight_norm: bool = True) -> None:
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(channels),
            conv1d(channels, channels, 7, dilation=dilation, weight_norm=weight_norm),
            Snake1d(channels),
            conv1d(channels, channels, 1, weight_norm=weight_norm),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class EncoderBlock(nn.Module):
    """Residual units at `in_channels`, then a strided conv: (B, C_in, N) -> (B, C_out, N / stride)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dilations: Sequence[int],
                 weight_norm: bool = True) -> None:
        super().__init__()
        self.block = nn.Sequential(
            *[ResidualUnit(in_channels, d, weight_norm) for d in dilations],
            Snake1d(in_channels),
            # kernel 2s with padding ceil(s/2) maps N = n*s samples to exactly n frames, for odd s too
            conv1d(in_channels, out_channels, 2 * stride, stride=stride, padding=math.ceil(stride / 2),
                   weight_norm=weight_norm),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class DecoderBlock(nn.Module):
    """A transposed conv upsampling by `stride`, then residual units: (B, C_in, n) -> (B, C_out, n * stride)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dilations: Sequence[int],
                 weight_norm: bool = True) -> None:
        super().__init__()
        # output length (n-1)s - 2*ceil(s/2) + 2s + (s mod 2) = n*s for every s
        up = nn.ConvTranspose1d(in_channels, out_channels, 2 * stride, stride=stride,
                                padding=math.ceil(stride / 2), output_padding=stride % 2)
        self.block = nn.Sequential(
            Snake1d(in_channels),
            _weight_norm(up) if weight_norm else up,
            *[ResidualUnit(out_channels, d, weight_norm) for d in dilations],
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


INIT_LOG_MAGNITUDE = -5.0


class ISTFTHead(nn.Module):
    """Vocos head (Siuzdak 2023): features (B, D, T) at an STFT frame rate -> waveform (B, C, T * hop).

    A 1x1 conv predicts per frame a log magnitude and a phase for n_fft / 2 + 1 bins (n_fft = 4 * hop);
    the inverse STFT (Hann window, centred frames) synthesises the samples. A time-domain head has to learn
    oscillators through transposed convolutions; this one gets them from the Fourier basis.
    """

    def __init__(self, in_channels: int, channels: int, hop: int) -> None:
        super().__init__()
        self.channels, self.hop, self.n_fft = channels, hop, 4 * hop
        self.bins = self.n_fft // 2 + 1
        # plain conv: its weight is a leaf Parameter, which the adaptive adversarial weight differentiates
        self.conv = nn.Conv1d(in_channels, channels * 2 * self.bins, 1)
        # Start near silence (|S| = e^-5 in every bin): from |S| ~ 1 the log-spectral losses first spend hundreds
        # of steps pushing down the many quiet bins of tonal audio (one batch, 150 steps: log-mel L1 3.3 vs 1.9).
        with torch.no_grad():
            self.conv.bias.view(channels, 2, self.bins)[:, 0] = INIT_LOG_MAGNITUDE
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)

    def forward(self, h: Tensor) -> Tensor:
        b, _, t = h.shape
        # one extra frame: T + 1 centred frames at 0, hop, ..., T * hop cover exactly T * hop samples
        h = F.pad(h, (0, 1), mode="replicate")  # (B, D, T + 1)
        logmag, phase = self.conv(h).float().reshape(b * self.channels, 2, self.bins, t + 1).unbind(1)
        # the clamp keeps exp finite early in training (Vocos clips the magnitude the same way)
        spec = torch.polar(torch.exp(logmag.clamp(max=7.0)), phase)  # (B*C, bins, T + 1) complex
        wave = torch.istft(spec, self.n_fft, self.hop, window=self.window.float(), center=True, length=t * self.hop)
        return wave.reshape(b, self.channels, t * self.hop)
