"""Audio VAE (DAC / Stable Audio style, or spectral): (B, C, N) audio in [-1, 1] <-> latents (B, C_lat, N / hop).

The encoder is a stack of strided 1-D convolutions with dilated residual units and Snake activations;
the decoder mirrors it with transposed convolutions. The hop (samples per latent frame) is the product
of `strides`: the default (2, 4, 5, 8) = 320 at 16 kHz gives 50 latent frames per second; (2, 4, 6, 8)
= 384 gives ~41.7 Hz. With `head="istft"` (Vocos) the decoder keeps only its first upsampling blocks, up to
one STFT frame per `istft_hop` samples, and an inverse STFT makes the samples (audio_blocks.ISTFTHead);
latents and shapes stay the same.

The spectral variant (tokenizers/audio.yaml): `encoder_input="stft"` reads each latent frame's STFT (n_fft
4 * hop) through `frame_blocks` ConvNeXt blocks at the latent rate instead of strided convolutions, the decoder
is the same ConvNeXt stack, and `head="magnitude"` predicts only a log magnitude per frame: Griffin-Lim finds
the phase at decode, training takes the input's own phase and scores the magnitudes directly
(`training_output`). A learnt phase per frame cannot hold a steady tone (BENCHMARKS.md, "Why the notes fail").
`magnitude_subframes` frames per latent frame, a GELU layer of `magnitude_hidden` before the readout, and
`magnitude_frequency` (each bin's instantaneous frequency too, integrated into the phase at decode: the pitch
of a lone partial, which its magnitude lobe alone places up to 35 cents off) refine that head.

A clip whose length is not a multiple of the hop is padded on the right with silence (zeros) before
encoding (L = ceil(N / hop) latent frames); `decode(z, like_shape=(B, C, N))` and `forward` crop back to N.
Padding rather than raising keeps arbitrary-length audio files usable; the last latent frame then
covers partly silence, which the decoder reproduces and the crop removes.

    vae = AudioVAE(AudioVAEConfig(sample_rate=16000, channels=1))
    wave = prepare_audio(wave, sr, vae.config.sample_rate, vae.config.channels)  # resample, mix
    post = vae.encode(wave[None])                     # (1, 32, ceil(N / 320))
    wave_hat = vae.decode(post.mode(), like_shape=wave[None].shape)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmflow.config import ConfigError, check, preset_config
from mmflow.data.audio_reader import CHANNEL_NAMES, prepare_audio
from mmflow.model_io import register_model
from mmflow.tokenizers.audio_blocks import (
    DecoderBlock, EncoderBlock, FrameStack, ISTFTHead, MagnitudeHead, ResidualUnit, Snake1d, conv1d,
    log_magnitude_loss, stft_features,
)
from mmflow.tokenizers.base import DiagonalGaussian, Tokenizer, TokenizerOutput, check_latent_stats

__all__ = ["AUDIO_VAE_PRESETS", "AudioVAE", "AudioVAEConfig", "audio_vae_config", "prepare_audio"]

logger = logging.getLogger("mmflow.tokenizers")



def _field(default: Any, doc: str = "", **bounds: Any) -> Any:
    return field(default=default, metadata={"help": doc, **bounds})


@dataclass
class AudioVAEConfig:
    sample_rate: int = _field(16000, "sample rate the VAE works at (Hz); inputs are resampled to it", min=1)
    channels: int = _field(1, "1 = mono, 2 = stereo", min=1, max=2)
    base_channels: int = _field(32, "width of the first conv", min=1)
    block_channels: tuple[int, ...] = _field((64, 128, 256, 512), "encoder width after each strided block", min=1)
    strides: tuple[int, ...] = _field((2, 4, 5, 8), "downsampling per block; their product is the hop", min=1)
    dilations: tuple[int, ...] = _field((1, 3, 9), "dilations of the residual units in every block", min=1)
    latent_channels: int = _field(32, "latent channels", min=1)
    weight_norm: bool = _field(True, "weight-normalised convs (DAC); the output conv never is")
    head: Literal["wave", "istft", "magnitude"] = _field("wave", "decoder output: 'wave' = a conv at the sample "
                                                                 "rate (DAC); 'istft' = log magnitude + phase per "
                                                                 "frame and an inverse STFT (Vocos), which learns "
                                                                 "pitch far sooner; 'magnitude' = a log magnitude "
                                                                 "per frame, its phase from Griffin-Lim (trained "
                                                                 "with the input's own phase)")
    griffin_lim_iters: int = _field(32, "head 'magnitude': Griffin-Lim iterations at decode (0: the phase vocoder's "
                                        "phase alone, with magnitude_frequency)", min=0)
    magnitude_subframes: int = _field(1, "head 'magnitude': STFT frames per latent frame (hop / this apart; n_fft "
                                         "stays 4x the hop): 2 halves the time step onsets are placed on", min=1)
    magnitude_frequency: bool = _field(False, "head 'magnitude': also predict each bin's instantaneous frequency "
                                              "(trained on the input's phase advance); decode integrates it into "
                                              "the phase Griffin-Lim starts from, so a lone partial keeps its pitch")
    magnitude_hidden: int = _field(0, "head 'magnitude': width of a GELU layer before its linear readout of the "
                                      "log magnitudes; 0 = the readout straight from the frame features", min=0)
    istft_hop: int | None = _field(None, "head 'istft': samples per STFT frame (n_fft = 4x); None = the hop. "
                                         "hop / istft_hop must be the product of the decoder's first strides "
                                         "(the reversed `strides`)", min=1)
    istft_phase: Literal["absolute", "integrated"] = _field("absolute", "head 'istft': 'absolute' = a phase per "
                                                                     "frame (Vocos); 'integrated' = plus a phase "
                                                                     "advance per frame summed over the frames, "
                                                                     "so steady tones stay coherent")
    encoder_input: Literal["wave", "stft"] = _field("wave", "encoder input: 'wave' = strided convs over the samples "
                                                              "(DAC); 'stft' = per latent frame the clip's STFT "
                                                              "(n_fft 4x the hop: log magnitude + compressed complex) "
                                                              "through `frame_blocks` ConvNeXt blocks, which sees "
                                                              "pitch in the harmonics from the first step")
    frame_blocks: int = _field(0, "ConvNeXt blocks (Vocos) at the latent rate, width `frame_channels`: the 'stft' "
                                  "encoder's, and the decoder's before a spectral head at the hop ('magnitude', or "
                                  "'istft' with istft_hop null) in place of its conv blocks; 0 = none", min=0)
    frame_channels: int = _field(256, "width of the frame-rate ConvNeXt stacks", min=1)
    init_posterior_std: float = _field(0.1, "posterior std the untrained encoder starts from (the logvar bias "
                                            "of its output conv); 1.0 = the prior's", min=0.0, min_exclusive=True)
    latent_shift: list[float] | None = _field(None, "per-channel latent mean (None until measured)")
    latent_scale: list[float] | None = _field(None, "per-channel 1/std (None until measured)")

    @property
    def hop_length(self) -> int:
        """Waveform samples per latent frame."""
        return math.prod(self.strides)

    @property
    def latent_rate(self) -> float:
        """Latent frames per second."""
        return self.sample_rate / self.hop_length

    def istft_blocks(self) -> int:
        """Decoder upsampling blocks before the ISTFT head: k such that the last k strides make hop / istft_hop."""
        hop = self.istft_hop or self.hop_length
        for k in range(len(self.strides) + 1):
            if hop * math.prod(self.strides[len(self.strides) - k:]) == self.hop_length:
                return k
        decoder = tuple(reversed(self.strides))
        valid = [self.hop_length // math.prod(decoder[:k]) for k in range(len(decoder) + 1)]
        raise ConfigError(f"{hop} must be the hop ({self.hop_length}) divided by the product of the decoder's first "
                          f"upsampling strides {decoder} (the reversed `strides`): one of {valid}", key="istft_hop")

    def validate(self) -> None:
        check(len(self.strides) >= 1, "strides", "needs at least one block")
        check(len(self.block_channels) == len(self.strides), "block_channels",
              f"needs one width per stride ({len(self.strides)}), got {len(self.block_channels)}")
        check(self.head == "istft" or self.istft_hop is None, "istft_hop", "is only used with head 'istft'")
        check(self.head == "istft" or self.istft_phase == "absolute", "istft_phase", "is only used with head 'istft'")
        if self.head == "istft":
            self.istft_blocks()
        check(self.encoder_input == "wave" or self.frame_blocks > 0, "frame_blocks",
              "the 'stft' encoder needs at least one ConvNeXt block")
        check(self.frame_blocks == 0 or (self.head == "istft" and self.istft_blocks() == 0)
              or self.head == "magnitude", "frame_blocks", "ConvNeXt frame blocks feed a spectral head at the hop: "
              "set head: magnitude, or head: istft and istft_hop: null")
        check(self.head != "magnitude" or self.frame_blocks > 0, "head",
              "'magnitude' needs the ConvNeXt frame decoder: set frame_blocks >= 1")
        check(self.head != "magnitude" or self.istft_hop is None, "istft_hop", "is only used with head 'istft'")
        check(self.head == "magnitude" or self.magnitude_subframes == 1, "magnitude_subframes",
              "is only used with head 'magnitude'")
        check(self.head == "magnitude" or self.magnitude_hidden == 0, "magnitude_hidden",
              "is only used with head 'magnitude'")
        check(self.head == "magnitude" or not self.magnitude_frequency, "magnitude_frequency",
              "is only used with head 'magnitude'")
        check(self.griffin_lim_iters > 0 or self.magnitude_frequency, "griffin_lim_iters",
              "0 leaves no phase without magnitude_frequency: set >= 1")
        check(self.head != "magnitude" or self.hop_length % (2 * self.magnitude_subframes) == 0, "magnitude_subframes",
              f"must split the hop ({self.hop_length}) into frames an even number of samples apart")
        check_latent_stats(self.latent_shift, self.latent_scale, self.latent_channels)


# Named sizes; other fields come from the caller. Hop 320 at 16 kHz = 50 latent frames per second.
AUDIO_VAE_PRESETS: dict[str, dict[str, Any]] = {
    "test": {"base_channels": 8, "block_channels": (8, 16), "strides": (2, 4), "latent_channels": 8},  # hop 8
    "tiny": {"base_channels": 16, "block_channels": (32, 64, 64, 128), "latent_channels": 16},  # hop 320
    "base": {"base_channels": 32, "block_channels": (64, 128, 256, 512), "latent_channels": 32},  # hop 320
    "base-hop384": {"base_channels": 32, "block_channels": (64, 128, 256, 512), "strides": (2, 4, 6, 8),
                    "latent_channels": 64},  # ~41.7 Hz at 16 kHz
}


def audio_vae_config(preset: str, **overrides: Any) -> AudioVAEConfig:
    """AudioVAEConfig of a named preset (AUDIO_VAE_PRESETS) with `overrides` applied, validated."""
    return preset_config(AudioVAEConfig, AUDIO_VAE_PRESETS, preset, "audio VAE", **overrides)


class AudioEncoder(nn.Module):
    """(B, C, n*hop) -> posterior parameters (B, 2*C_lat, n)."""

    def __init__(self, cfg: AudioVAEConfig) -> None:
        super().__init__()
        wn, self.hop = cfg.weight_norm, cfg.hop_length
        self.spectral = cfg.encoder_input == "stft"
        if self.spectral:
            bins = 2 * cfg.hop_length + 1  # n_fft = 4 * hop
            # a 1x1 input conv: a wide kernel over 3 * bins channels would hold most of the model's weights
            self.frames = FrameStack(cfg.channels * 3 * bins, cfg.frame_channels, cfg.frame_blocks, kernel_size=1)
            self.conv_out = nn.Conv1d(cfg.frame_channels, 2 * cfg.latent_channels, 1)
            with torch.no_grad():  # unit-scale (LayerNorm) features would scatter the starting std 0.07-0.2
                self.conv_out.weight[cfg.latent_channels:] *= 0.1
        else:
            widths = [cfg.base_channels, *cfg.block_channels]
            self.conv_in = conv1d(cfg.channels, cfg.base_channels, 7, weight_norm=wn)
            self.blocks = nn.Sequential(*[EncoderBlock(widths[i], widths[i + 1], s, cfg.dilations, wn)
                                          for i, s in enumerate(cfg.strides)])
            self.act = Snake1d(widths[-1])
            self.conv_out = conv1d(widths[-1], 2 * cfg.latent_channels, 3, weight_norm=wn)
        # Noise as large as the prior drowns an untrained encoder's small means (~0.1): the decoder then learns
        # to output silence and ignores its input (posterior collapse: l1 stuck at the data's mean |x|).
        nn.init.constant_(self.conv_out.bias[cfg.latent_channels:], 2 * math.log(cfg.init_posterior_std))

    def forward(self, x: Tensor) -> Tensor:
        if self.spectral:
            return self.conv_out(self.frames(stft_features(x, self.hop)))  # (B, 2*C_lat, n)
        h = self.blocks(self.conv_in(x))  # (B, C_last, n)
        return self.conv_out(self.act(h))  # (B, 2*C_lat, n)


class AudioDecoder(nn.Module):
    """Raw latents (B, C_lat, n) -> waveform (B, C, n*hop), unbounded (not clamped to [-1, 1])."""

    def __init__(self, cfg: AudioVAEConfig) -> None:
        super().__init__()
        wn, depth = cfg.weight_norm, len(cfg.strides)
        widths = [cfg.base_channels, *cfg.block_channels]
        keep = cfg.istft_blocks() if cfg.head == "istft" else depth
        self.convnext = cfg.frame_blocks > 0
        if self.convnext:  # Vocos: latents -> ConvNeXt stack at the frame rate -> a spectral head
            self.frames = FrameStack(cfg.latent_channels, cfg.frame_channels, cfg.frame_blocks)
            self.istft = True
            if cfg.head == "magnitude":
                self.head = MagnitudeHead(cfg.frame_channels, cfg.channels, cfg.hop_length, cfg.griffin_lim_iters,
                                          cfg.magnitude_subframes, cfg.magnitude_hidden, cfg.magnitude_frequency)
            else:
                self.head = ISTFTHead(cfg.frame_channels, cfg.channels, cfg.hop_length,
                                      cfg.istft_phase == "integrated")
            return
        self.conv_in = conv1d(cfg.latent_channels, widths[-1], 7, weight_norm=wn)
        self.blocks = nn.Sequential(*[DecoderBlock(widths[i + 1], widths[i], cfg.strides[i], cfg.dilations, wn)
                                      for i in reversed(range(depth - keep, depth))])
        width, self.istft = widths[depth - keep], cfg.head == "istft"
        if self.istft:
            # residual units at the frame rate: with no upsampling block kept the decoder would be two convs
            self.frames = nn.Sequential(*[ResidualUnit(width, d, wn) for d in cfg.dilations])
        self.act = Snake1d(width)
        if self.istft:
            self.head = ISTFTHead(width, cfg.channels, cfg.istft_hop or cfg.hop_length,
                                  cfg.istft_phase == "integrated")
        else:
            # plain conv: its weight is a leaf Parameter, which the adaptive adversarial weight differentiates
            self.conv_out = conv1d(width, cfg.channels, 7, weight_norm=False)

    def last_layer_weight(self) -> nn.Parameter:
        return self.head.conv.weight if self.istft else self.conv_out.weight

    def forward(self, z: Tensor) -> Tensor:
        if self.convnext:
            return self.head(self.frames(z))  # (B, C, n*hop); the magnitude head: Griffin-Lim
        h = self.blocks(self.conv_in(z))  # istft: (B, width, n*hop / istft_hop); wave: (B, base, n*hop)
        if self.istft:
            return self.head(self.act(self.frames(h)))  # (B, C, n*hop)
        return self.conv_out(self.act(h))  # (B, C, n*hop)


@register_model("audio_vae")
class AudioVAE(Tokenizer):
    """Waveform VAE; see the module docstring. Register name: "audio_vae"."""

    modality = "audio"
    config_class = AudioVAEConfig

    def __init__(self, config: AudioVAEConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.encoder = AudioEncoder(config)
        self.decoder = AudioDecoder(config)

    def num_latent_frames(self, num_samples: int) -> int:
        return math.ceil(num_samples / self.config.hop_length)

    def latent_shape(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """Waveform shape (C, N) -> latent shape (latent_channels, ceil(N / hop)), checked as encode checks it."""
        shape = tuple(shape)
        if len(shape) != 2:
            raise ValueError(f"expected a waveform shape (C, N), got {shape}")
        if shape[0] != self.config.channels or shape[1] == 0:
            raise ValueError(f"AudioVAE expects {self.config.channels} channel(s) and some samples, got {shape}")
        return self.config.latent_channels, self.num_latent_frames(shape[1])

    def last_layer_weight(self) -> nn.Parameter:
        """The decoder's output weight (for the adaptive adversarial weight in mmflow.tokenizers.losses)."""
        return self.decoder.last_layer_weight()

    def _check_audio(self, x: Tensor) -> None:
        c = self.config.channels
        if x.ndim != 3:
            hint = "; add the batch dim with x.unsqueeze(0)" if x.ndim == 2 else ""
            raise ValueError(f"AudioVAE expects a waveform of shape (B, C, N), got {tuple(x.shape)}{hint}")
        if x.shape[1] != c:
            raise ValueError(f"AudioVAE expects {CHANNEL_NAMES.get(c, c)} audio ({c} channel{'s' * (c > 1)}) at dim 1, "
                             f"got {x.shape[1]} channels in shape {tuple(x.shape)}; convert with "
                             f"prepare_audio(wave, sr, {self.config.sample_rate}, channels={c})")
        if x.shape[2] == 0:
            raise ValueError("AudioVAE: the waveform has no samples")
        if not torch.isfinite(x).all():
            raise ValueError("AudioVAE: input waveform contains NaN or Inf values")

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """Waveform (B, C, N) in [-1, 1] -> posterior over raw latents (B, C_lat, ceil(N / hop))."""
        self._check_audio(x)
        extra = -x.shape[2] % self.config.hop_length
        if extra:
            x = F.pad(x, (0, extra))  # (B, C, ceil(N / hop) * hop), silence on the right
        mean, logvar = self.encoder(x).chunk(2, dim=1)  # (B, C_lat, n) each
        return DiagonalGaussian(mean, logvar)

    def decode(self, z: Tensor, like_shape: Sequence[int] | None = None) -> Tensor:
        """Raw latents (B, C_lat, n) -> waveform (B, C, n*hop), cropped to like_shape (B, C, N)'s N when given."""
        self.check_latents(z, "L")
        hop = self.config.hop_length
        wave = self.decoder(z)
        if like_shape is not None:
            num_samples, full = like_shape[2], wave.shape[2]
            if not full - hop < num_samples <= full:
                raise ValueError(f"AudioVAE.decode: num_samples={num_samples} does not match {z.shape[2]} latent "
                                 f"frames (hop {hop}: valid {full - hop + 1}..{full})")
            wave = wave[:, :, :num_samples]
        return wave

    def training_output(self, z: Tensor, x: Tensor, posterior: DiagonalGaussian) -> TokenizerOutput:
        """The magnitude head's training pass: its magnitudes with x's own phase make the reconstruction (so the
        waveform losses measure the magnitude alone), and their log-magnitude L1 + spectral convergence
        against x's STFT is the decoder loss: the inverse STFT of a magnitude and a phase it does not fit is
        not that magnitude (a widened partial partly cancels there), and Griffin-Lim at decode would restore it."""
        if self.config.head != "magnitude":
            return super().training_output(z, x, posterior)
        self.check_latents(z, "L")
        head = self.decoder.head
        mag, offset = head.predict(self.decoder.frames(z))  # (B*C, bins, n * subframes + 2) each
        spec = head.spectrum(x, z.shape[-1])  # (B*C, bins, n * subframes + 2) complex
        wave = head.synthesise(mag, spec.angle())[..., : x.shape[-1]]  # (B, C, N)
        loss = log_magnitude_loss(mag, spec.abs())
        if offset is not None:
            loss = loss + head.frequency_loss(offset, spec)
        return TokenizerOutput(wave, posterior, z, self.last_layer_weight(), loss)
