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

    With `integrate_phase` the conv also predicts each bin's phase advance per frame (its instantaneous
    frequency), summed over the frames, and the phase is that sum plus the per-frame phase. A steady tone then
    comes from a steady input: a convolution over identical frames predicts identical absolute phases, which
    cancel between overlapping frames unless the tone's frequency is a multiple of the frame rate (the
    reconstructions beat at the frame rate, 50 Hz, and a pitch tracker reads 49 Hz). The advance starts at that
    of the bin's centre frequency, 2 pi k hop / n_fft, so the untrained head already overlaps coherently.
    """

    def __init__(self, in_channels: int, channels: int, hop: int, integrate_phase: bool = False) -> None:
        super().__init__()
        self.channels, self.hop, self.n_fft = channels, hop, 4 * hop
        self.bins = self.n_fft // 2 + 1
        self.parts = 3 if integrate_phase else 2  # log magnitude, phase (, phase advance per frame)
        # plain conv: its weight is a leaf Parameter, which the adaptive adversarial weight differentiates
        self.conv = nn.Conv1d(in_channels, channels * self.parts * self.bins, 1)
        # Start near silence (|S| = e^-5 in every bin): from |S| ~ 1 the log-spectral losses first spend hundreds
        # of steps pushing down the many quiet bins of tonal audio (one batch, 150 steps: log-mel L1 3.3 vs 1.9).
        with torch.no_grad():
            bias = self.conv.bias.view(channels, self.parts, self.bins)
            bias[:, 0] = INIT_LOG_MAGNITUDE
            if integrate_phase:  # 2 pi k hop / n_fft = k pi / 2, wrapped to [0, 2 pi)
                bias[:, 2] = torch.remainder(torch.arange(self.bins) * (2 * math.pi * hop / self.n_fft), 2 * math.pi)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)

    def forward(self, h: Tensor) -> Tensor:
        b, _, t = h.shape
        # one extra frame: T + 1 centred frames at 0, hop, ..., T * hop cover exactly T * hop samples
        h = F.pad(h, (0, 1), mode="replicate")  # (B, D, T + 1)
        parts = self.conv(h).float().reshape(b * self.channels, self.parts, self.bins, t + 1).unbind(1)
        logmag, phase = parts[0], parts[1]
        if self.parts == 3:
            phase = phase + parts[2].cumsum(-1)  # (B*C, bins, T + 1)
        # the clamp keeps exp finite early in training (Vocos clips the magnitude the same way)
        spec = torch.polar(torch.exp(logmag.clamp(max=7.0)), phase)  # (B*C, bins, T + 1) complex
        wave = torch.istft(spec, self.n_fft, self.hop, window=self.window.float(), center=True, length=t * self.hop)
        return wave.reshape(b, self.channels, t * self.hop)


class MagnitudeHead(nn.Module):
    """Features (B, D, T) at the latent frame rate -> waveform (B, C, T * hop) from a predicted log magnitude.

    A 1x1 conv predicts per latent frame the log magnitude of n_fft / 2 + 1 bins (n_fft = 4 * hop) for
    `subframes` STFT frames, `step` = hop / subframes apart: frames centred at (i + (k + 1/2) / subframes) * hop,
    k < subframes, on latent frame i's span as the encoder's STFT frame i is centred on it. Beyond the clip one
    more frame each side (from the edge features) completes the overlap-add there. The phase is not learnt as a
    phase: in training it is the reference clip's own (the input being reconstructed), so the losses measure the
    magnitude; at decode Griffin-Lim (momentum 0.99) finds a phase that fits it. A learnt phase has to advance
    coherently from frame to frame, which a convolution over a steady input cannot do (its phases repeat, and a
    tone between multiples of the frame rate cancels itself: the reconstructions beat at 50 Hz).

    With `frequency`, the head also predicts each bin's instantaneous frequency (its offset from the bin's centre,
    in bins; trained on the reference's phase advance between frames, `frequency_loss`): decode integrates it
    into a phase, locked across each spectral peak's bins (a phase vocoder), which Griffin-Lim may refine. The
    pitch of a lone partial then comes from a predicted frequency instead of from the shape of its magnitude lobe,
    which a magnitude head gets 0.3 bins wrong (a sine 25-35 cents off).
    """

    def __init__(self, in_channels: int, channels: int, hop: int, griffin_lim_iters: int = 32,
                 subframes: int = 1, hidden: int = 0, frequency: bool = False) -> None:
        super().__init__()
        if hop % (2 * subframes):
            raise ValueError(f"MagnitudeHead: hop {hop} must split into {subframes} frames of an even step")
        self.channels, self.hop, self.n_fft, self.iters = channels, hop, 4 * hop, griffin_lim_iters
        self.subframes, self.step, self.bins = subframes, hop // subframes, 2 * hop + 1
        self.outputs = 2 if frequency else 1  # log magnitude (and frequency offset) per bin and frame
        self.unit = 2 * math.pi * self.step / self.n_fft  # phase advance per frame of one bin's frequency
        # `hidden` > 0: a pointwise GELU layer first. A linear readout of D features spans only a D-dimensional
        # family of log spectra, too few for a harmonic comb at every pitch.
        self.hidden = nn.Sequential(nn.Conv1d(in_channels, hidden, 1), nn.GELU()) if hidden else nn.Identity()
        # plain conv: its weight is a leaf Parameter, which the adaptive adversarial weight differentiates
        self.conv = nn.Conv1d(hidden or in_channels, channels * subframes * self.outputs * self.bins, 1)
        with torch.no_grad():  # start near silence, as ISTFTHead does; frequencies at the bins' centres
            self.conv.bias.view(channels * subframes, self.outputs, self.bins)[:, 0] = INIT_LOG_MAGNITUDE
            self.conv.bias.view(channels * subframes, self.outputs, self.bins)[:, 1:] = 0.0
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)

    def predict(self, h: Tensor) -> tuple[Tensor, Tensor | None]:
        """Features (B, D, T) -> magnitudes (B*C, bins, T * subframes + 2), frame j centred at (j - 1/2) * step,
        and with `frequency` each bin's frequency offset in bins (same shape; else None)."""
        b, _, t = h.shape
        s, k = self.subframes, self.outputs
        h = F.pad(h, (1, 1), mode="replicate")  # (B, D, T + 2): the edge frames' features
        out = self.conv(self.hidden(h)).float().reshape(b * self.channels, s, k, self.bins, t + 2)
        out = out.permute(0, 2, 3, 4, 1).reshape(b * self.channels, k, self.bins, (t + 2) * s)  # frame = latent*s + k
        out = out[..., s - 1: (t + 1) * s + 1]  # the clip's frames and one beyond each edge
        mag = torch.exp(out[:, 0].clamp(max=7.0))
        # offsets within the advance's unambiguous range, +-n_fft / (2 * step) bins
        offset = torch.tanh(out[:, 1]) * (math.pi / self.unit) if k == 2 else None
        return mag, offset

    def magnitude(self, h: Tensor) -> Tensor:
        """Features (B, D, T) -> magnitudes (B*C, bins, T * subframes + 2)."""
        return self.predict(h)[0]

    def spectrum(self, reference: Tensor, frames: int) -> Tensor:
        """The STFT (B*C, bins, frames * subframes + 2), complex, of `reference` (B, C, N <= frames * hop) padded
        with silence to frames * hop: what `predict` predicts, frame for frame."""
        ref = reference.reshape(-1, reference.shape[-1]).float()
        half = self.step // 2
        ref = F.pad(ref, (half, frames * self.hop - ref.shape[-1] + half))  # (B*C, frames * hop + step)
        return torch.stft(ref, self.n_fft, self.step, window=self.window.float(), center=True, pad_mode="constant",
                          return_complex=True)

    def frequency_loss(self, offset: Tensor, spectrum: Tensor) -> Tensor:
        """Predicted frequency offsets (N, bins, F) against `spectrum`'s (N, bins, F) phase advance from each frame
        to the next: the wrapped phase error in radians, weighted by the two frames' magnitudes (a quiet bin's
        phase is noise)."""
        bins = torch.arange(self.bins, device=offset.device, dtype=torch.float32)[:, None]  # (bins, 1)
        advance = torch.angle(spectrum[..., 1:] * spectrum[..., :-1].conj())  # (N, bins, F - 1)
        error = advance - self.unit * (bins + offset[..., 1:])
        error = torch.remainder(error + math.pi, 2 * math.pi) - math.pi  # wrapped to [-pi, pi)
        weight = spectrum[..., 1:].abs() * spectrum[..., :-1].abs()
        return (weight * error.abs()).sum() / weight.sum().clamp_min(1e-8)

    def vocoder_phase(self, mag: Tensor, offset: Tensor, width: int = 5) -> Tensor:
        """A phase (N, bins, F) from the frequency offsets: each bin advances at its predicted frequency, then takes
        the phase of the loudest bin within width // 2 (its peak) plus pi per bin from it (a Hann window's lobe
        alternates in sign about the frame's start), so a partial's bins stay one coherent sinusoid."""
        n, nb, frames = mag.shape
        bins = torch.arange(nb, device=mag.device, dtype=torch.float32)[None]  # (1, bins)
        log_mag = mag.clamp_min(1e-7).log().transpose(1, 2).reshape(n * frames, 1, nb)
        _, peak = F.max_pool1d(log_mag, width, 1, width // 2, return_indices=True)
        peak = peak.reshape(n, frames, nb).transpose(1, 2)  # (N, bins, F) the bin each bin locks to
        phase, out = math.pi * bins.expand(n, nb), []
        for f in range(frames):  # sequential: each frame's phase advances the previous one's
            advanced = phase + self.unit * (bins + offset[..., f])
            phase = advanced.gather(1, peak[..., f]) + math.pi * (bins - peak[..., f])
            out.append(phase)
        return torch.stack(out, -1)

    def griffin_lim(self, mag: Tensor, phase: Tensor, iters: int, length: int) -> Tensor:
        """Magnitudes (N, bins, F) and a starting phase -> waveform (N, length): `iters` Griffin-Lim iterations
        (fast, momentum 0.99) from that phase, then the inverse STFT."""
        window, momentum = self.window.float(), 0.99
        angles, previous = torch.polar(torch.ones_like(mag), phase), torch.zeros_like(mag, dtype=torch.complex64)
        for _ in range(iters):
            wave = torch.istft(mag * angles, self.n_fft, self.step, window=window, center=True, length=length)
            rebuilt = torch.stft(wave, self.n_fft, self.step, window=window, center=True, pad_mode="constant",
                                 return_complex=True)
            angles = rebuilt - previous * (momentum / (1 + momentum))
            angles, previous = angles / (angles.abs() + 1e-16), rebuilt
        return torch.istft(mag * angles, self.n_fft, self.step, window=window, center=True, length=length)

    def synthesise(self, mag: Tensor, phase: Tensor | None = None, offset: Tensor | None = None) -> Tensor:
        """Magnitudes (B*C, bins, T * subframes + 2) -> waveform (B, C, T * hop): with `phase` (training: the
        reference's) an inverse STFT; without, Griffin-Lim from the phase the frequency `offset`s give (else zero)."""
        n, half = (mag.shape[-1] - 2) * self.step, self.step // 2
        if phase is None:
            start = self.vocoder_phase(mag, offset) if offset is not None else torch.zeros_like(mag)
            wave = self.griffin_lim(mag, start, self.iters, n + self.step)
        else:
            wave = self.griffin_lim(mag, phase, 0, n + self.step)
        return wave[:, half: half + n].reshape(-1, self.channels, n)

    def forward(self, h: Tensor) -> Tensor:
        """Features (B, D, T) -> waveform (B, C, T * hop) through Griffin-Lim (training: AudioVAE.training_output)."""
        mag, offset = self.predict(h)
        return self.synthesise(mag, offset=offset)


def log_magnitude_loss(mag: Tensor, target: Tensor) -> Tensor:
    """Log-magnitude L1 + spectral convergence of predicted STFT magnitudes against a target's, (..., bins, T)."""
    log_l1 = (mag.clamp_min(1e-5).log() - target.clamp_min(1e-5).log()).abs().mean()
    convergence = torch.linalg.vector_norm(target - mag) / torch.linalg.vector_norm(target).clamp_min(1e-8)
    return log_l1 + convergence


class ConvNeXt1d(nn.Module):
    """Vocos backbone block: depthwise conv (k=7) -> LayerNorm -> pointwise MLP (GELU) -> layer scale, plus the input.

    (B, D, T) -> (B, D, T). Cheap at a frame rate (50 Hz at hop 320), so a wide stack costs little there.
    """

    def __init__(self, channels: int, mlp_ratio: int = 3, layer_scale: float = 0.1) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(channels, mlp_ratio * channels), nn.GELU(),
                                 nn.Linear(mlp_ratio * channels, channels))
        self.gamma = nn.Parameter(torch.full((channels,), layer_scale))

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(self.dwconv(x).transpose(1, 2))  # (B, T, D)
        return x + (self.gamma * self.mlp(h)).transpose(1, 2)


class FrameStack(nn.Module):
    """A conv into width D, `depth` ConvNeXt1d blocks and a LayerNorm: (B, C_in, T) -> (B, D, T)."""

    def __init__(self, in_channels: int, channels: int, depth: int, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv_in = nn.Conv1d(in_channels, channels, kernel_size, padding=kernel_size // 2)
        self.norm_in = nn.LayerNorm(channels, eps=1e-6)
        self.blocks = nn.Sequential(*[ConvNeXt1d(channels, layer_scale=1.0 / depth) for _ in range(depth)])
        self.norm_out = nn.LayerNorm(channels, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm_in(self.conv_in(x).transpose(1, 2)).transpose(1, 2)  # (B, D, T)
        return self.norm_out(self.blocks(h).transpose(1, 2)).transpose(1, 2)


def stft_features(x: Tensor, hop: int) -> Tensor:
    """Waveform (B, C, n * hop) -> (B, C * 3 * (2 * hop + 1), n): per latent frame, the log magnitude and the
    power-compressed (|X|^0.3) real and imaginary parts of a Hann STFT with n_fft = 4 * hop, frame i centred on
    the middle of samples [i * hop, (i + 1) * hop). The magnitude carries pitch in its harmonic peaks, which a
    waveform encoder has to discover; the compressed complex part keeps the phase (onsets within a frame)."""
    b, c, n = x.shape
    n_fft = 4 * hop
    left = (n_fft - hop) // 2
    frames = F.pad(x.reshape(b * c, n).float(), (left, n_fft - hop - left))  # (B*C, n + n_fft - hop)
    window = torch.hann_window(n_fft, device=x.device)
    spec = torch.stft(frames, n_fft, hop, window=window, center=False, return_complex=True)  # (B*C, bins, n / hop)
    mag = spec.abs().clamp_min(1e-5)
    compressed = spec * mag.pow(-0.7)  # |X|^0.3 e^{i phase}
    feats = torch.cat([mag.log(), compressed.real, compressed.imag], dim=1)  # (B*C, 3 * bins, n / hop)
    return feats.reshape(b, c * feats.shape[1], feats.shape[2]).to(x.dtype)
