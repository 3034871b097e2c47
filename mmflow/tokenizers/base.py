"""What every tokenizer (modality VAE) shares: the Gaussian posterior and latent normalisation.

A tokenizer maps media x to a diagonal-Gaussian posterior q(z|x) over *raw* latents and decodes raw
latents back. The flow model never sees raw latents: `encode_latents` returns normalised latents
(z - shift) * scale, per channel, so they have roughly unit variance, and `decode_latents` undoes that.
The statistics are measured on data after training (mmflow.tokenizers.latent_stats) and stored in the
tokenizer's config, so a saved tokenizer folder carries them.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from mmflow.config import check

# noise(*latent_shape) -> (B, *latent_shape) standard normal, one row per example (e.g. BatchRandom.randn)
NoiseFn = Callable[..., Tensor]


@dataclass
class DiagonalGaussian:
    """q(z|x) = N(mean, exp(logvar)); mean and logvar have the latent shape (B, C, ...)."""

    mean: Tensor
    logvar: Tensor

    def __post_init__(self) -> None:
        # the clamp keeps exp() finite early in training (diffusers clamps to the same range)
        self.logvar = self.logvar.clamp(-30.0, 20.0)

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None, noise: NoiseFn | None = None) -> Tensor:
        """mean + std * eps; eps from `noise` (per-example shape in), else drawn with `generator`."""
        if noise is not None:
            eps = noise(*self.mean.shape[1:]).to(self.mean.dtype)
        else:
            eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) per example, summed over latent elements: (B,)."""
        kl = 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar)
        return kl.flatten(1).sum(1)


def check_latent_stats(shift: list[float] | None, scale: list[float] | None, channels: int) -> None:
    """Config check shared by every tokenizer: one finite value per latent channel, non-zero scales."""
    for key, value in (("latent_shift", shift), ("latent_scale", scale)):
        if value is None:
            continue
        check(len(value) == channels, key,
              f"has {len(value)} entries but latent_channels is {channels} (one per channel)")
        check(all(math.isfinite(v) for v in value), key, f"must be finite, got {list(value)}")
    check(scale is None or all(v != 0 for v in scale), "latent_scale", f"entries must be non-zero, got {scale}")


@dataclass
class TokenizerOutput:
    """A training pass (`Tokenizer.forward`): reconstruction like the input (B, C, ...), the posterior and
    the latents decoded (B, C_lat, ...), and the decoder's output weight for the adaptive adversarial weight
    (here because a caller holding the DDP wrapper cannot reach `last_layer_weight()`)."""

    reconstruction: Tensor
    posterior: DiagonalGaussian
    latents: Tensor
    last_layer: Tensor
    decoder_loss: Tensor | None = None  # a loss the decoder scores itself with (added to the training loss)


class Tokenizer(nn.Module):
    """Base class of the image, video and audio VAEs.

    Subclasses set `modality` (the name of the media they take, a key of mmflow.modalities.MODALITIES),
    `config` (a dataclass with `latent_channels`, `latent_shift` and `latent_scale`: lists of
    per-channel floats, or None before statistics are measured) and implement `encode` (media ->
    posterior over raw latents), `decode` (raw latents -> media) and `last_layer_weight`.
    """

    modality: ClassVar[str]
    config: object
    # train.init_from: measured after training, not architecture (a run re-measures them), so not compared
    init_measured_fields: ClassVar[tuple[str, ...]] = ("latent_shift", "latent_scale")

    def encoder_modules(self) -> list[nn.Module]:
        """The modules that map media to the posterior (what a decoder-only fine-tune freezes)."""
        return [m for m in (getattr(self, "encoder", None), getattr(self, "quant_conv", None)) if m is not None]

    @abstractmethod
    def encode(self, x: Tensor) -> DiagonalGaussian:
        """Media (B, C, ...) in [-1, 1] (audio: waveform in [-1, 1]) -> posterior over raw latents."""

    @abstractmethod
    def decode(self, z: Tensor, like_shape: Sequence[int] | None = None) -> Tensor:
        """Raw latents (B, C_latent, ...) -> media (B, C, ...).

        `like_shape`: the shape (B, C, ...) of the media these latents were encoded from; a tokenizer
        that pads on encode (video frames, audio samples) crops its output back to it.
        """

    @abstractmethod
    def last_layer_weight(self) -> nn.Parameter:
        """The decoder's output weight (VQGAN's adaptive adversarial weight compares gradients there)."""

    def forward(self, x: Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None,
                noise: NoiseFn | None = None) -> TokenizerOutput:
        """The training pass: encode x (B, C, ...), take a posterior sample (eps from `noise`, else from
        `generator`) or the mean, decode back to x's shape. Training calls it through the parallel wrapper,
        so DDP arms its gradient all-reduce."""
        posterior = self.encode(x)
        z = posterior.sample(generator, noise) if sample_posterior else posterior.mode()
        return self.training_output(z, x, posterior)

    def check_latents(self, z: Tensor, layout: str) -> None:
        """Raise unless z is finite raw latents (B, latent_channels, *layout); `layout` names the trailing dims
        for the message ("L", "T', H', W'")."""
        name, c = type(self).__name__, self.config.latent_channels  # type: ignore[attr-defined]
        if z.ndim != 2 + len(layout.split(", ")) or z.shape[1] != c:
            raise ValueError(f"{name}.decode expects latents of shape (B, {c}, {layout}), got {tuple(z.shape)}")
        if not torch.isfinite(z).all():
            raise ValueError(f"{name}.decode: latents contain NaN or Inf values")

    def training_output(self, z: Tensor, x: Tensor, posterior: DiagonalGaussian) -> TokenizerOutput:
        """The training pass's decode of z, the latents of x (B, C, ...). A tokenizer whose decoder learns from
        more of x overrides it (the audio VAE's magnitude head: x's phase, and a loss on its magnitudes)."""
        return TokenizerOutput(self.decode(z, like_shape=x.shape), posterior, z, self.last_layer_weight())

    def _stats(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Per-channel shift and scale, shaped to broadcast over z (B, C, ...)."""
        c = z.shape[1]
        shift = getattr(self.config, "latent_shift", None)
        scale = getattr(self.config, "latent_scale", None)
        view = (1, c) + (1,) * (z.ndim - 2)
        shift_t = torch.zeros(c) if shift is None else torch.tensor(shift, dtype=torch.float32)
        scale_t = torch.ones(c) if scale is None else torch.tensor(scale, dtype=torch.float32)
        return shift_t.to(z).view(view), scale_t.to(z).view(view)

    def normalize(self, z: Tensor) -> Tensor:
        shift, scale = self._stats(z)
        return (z - shift) * scale

    def denormalize(self, z: Tensor) -> Tensor:
        shift, scale = self._stats(z)
        return z / scale + shift

    def encode_latents(self, x: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Media -> normalised latents the flow model trains on (posterior mean, or a sample)."""
        post = self.encode(x)
        z = post.sample(generator) if sample else post.mode()
        return self.normalize(z)

    def decode_latents(self, z: Tensor) -> Tensor:
        """Normalised latents (as sampled by the flow model) -> media."""
        return self.decode(self.denormalize(z))
