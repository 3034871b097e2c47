"""Image tokenizer: the KL autoencoder of latent diffusion / Stable Diffusion (diffusers' AutoencoderKL).

    encode: x (B, C, H, W) in [-1, 1] -> q(z|x) over raw latents (B, latent_channels, H/f, W/f)
    decode: z (B, latent_channels, H/f, W/f) -> x_hat (B, C, H, W)

f = 2 ** (len(block_out_channels) - 1). The encoder is conv_in, one DownBlock2d per level (all but
the last halve the resolution), a MidBlock2d (resnet, attention, resnet), GroupNorm, SiLU and a conv
to 2 * latent_channels (mean, logvar). The decoder mirrors it with nearest-neighbour upsampling and
one resnet more per level, exactly as diffusers builds it, so SD1/SDXL (4 channels, quant convs)
and SD3/Flux-style (16 channels, no quant convs) weights convert without change
(mmflow.interop.diffusers_vae). Initialisation is PyTorch's default, as in diffusers.

Large images can be encoded and decoded as overlapping, blended tiles (`tile_latent_size`,
mmflow.tokenizers.tiling); off by default.

Run-time setting, not saved with the model: `ImageVAE(config, gradient_checkpointing=True)` or later
`vae.set_gradient_checkpointing(True)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mmflow.config import check, preset_config
from mmflow.model_io import register_model
from mmflow.tokenizers.base import DiagonalGaussian, Tokenizer, check_latent_stats
from mmflow.tokenizers.conv_blocks import DownBlock2d, MidBlock2d, UpBlock2d, group_norm
from mmflow.tokenizers.tiling import (
    resolve_tiling, tile_overlap_field, tile_size_field, tiled_map, validate_tiling,
)

__all__ = ["ImageVAEConfig", "ImageVAE", "ImageEncoder", "ImageDecoder", "IMAGE_VAE_PRESETS",
           "image_vae_config"]


def _field(default: Any, doc: str = "", **bounds: Any) -> Any:
    """A config field with its help text and bounds (checked by mmflow.config.from_dict)."""
    return field(default=default, metadata={"help": doc, **bounds})


@dataclass
class ImageVAEConfig:
    in_channels: int = _field(3, "image channels (the decoder outputs as many)", min=1)
    latent_channels: int = _field(16, "channels of the latent (SD1/SDXL 4, SD3/Flux 16)", min=1)
    block_out_channels: tuple[int, ...] = _field((128, 256, 512, 512), "width per level; downsampling factor "
                                                 "f = 2 ** (levels - 1)", min=1)
    layers_per_block: int = _field(2, "resnets per encoder level (the decoder has one more)", min=1)
    norm_num_groups: int = _field(32, "GroupNorm groups; must divide every width", min=1)
    mid_block_attention: bool = _field(True, "self-attention between the two mid-block resnets")
    use_quant_conv: bool = _field(False, "1x1 convs after the encoder and before the decoder (SD1/SDXL have them)")
    dropout: float = _field(0.0, "dropout inside every resnet", min=0.0, max=1.0, max_exclusive=True)
    tile_latent_size: int = tile_size_field()  # spatial tiling of encode/decode (mmflow.tokenizers.tiling)
    tile_overlap: int | None = tile_overlap_field()
    latent_shift: list[float] | None = _field(None, "per-channel shift of raw latents (None = 0); see latent_stats")
    latent_scale: list[float] | None = _field(None, "per-channel scale, ~1/std of raw latents (None = 1)")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def validate(self) -> None:
        check(len(self.block_out_channels) >= 1, "block_out_channels", "needs at least one level")
        bad = [w for w in self.block_out_channels if w % self.norm_num_groups != 0]
        check(not bad, "norm_num_groups",
              f"{self.norm_num_groups} does not divide the widths {bad} of block_out_channels "
              f"{list(self.block_out_channels)}")
        validate_tiling(self.tile_latent_size, self.tile_overlap)
        check_latent_stats(self.latent_shift, self.latent_scale, self.latent_channels)


# Named sizes; other fields come from the caller. "sd3" and "sd" are the Stable Diffusion layouts.
IMAGE_VAE_PRESETS: dict[str, dict[str, Any]] = {
    "test": dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, latent_channels=4),  # f2
    "tiny": dict(block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=8, latent_channels=4),  # f4
    "small-f8": dict(block_out_channels=(64, 128, 256, 256), layers_per_block=2, norm_num_groups=32),
    "sd3": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16, use_quant_conv=False),
    "sd": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, use_quant_conv=True),
}


def image_vae_config(preset: str, **overrides: Any) -> ImageVAEConfig:
    """ImageVAEConfig of a named preset (IMAGE_VAE_PRESETS) with `overrides` applied, validated."""
    return preset_config(ImageVAEConfig, IMAGE_VAE_PRESETS, preset, "image VAE", **overrides)


def _run(module: nn.Module, x: Tensor, recompute: bool) -> Tensor:
    if recompute and torch.is_grad_enabled():
        return checkpoint(module, x, use_reentrant=False)
    return module(x)


class ImageEncoder(nn.Module):
    """x (B, C, H, W) -> (B, 2 * latent_channels, H/f, W/f): posterior mean and logvar, concatenated."""

    def __init__(self, config: ImageVAEConfig) -> None:
        super().__init__()
        widths, g = list(config.block_out_channels), config.norm_num_groups
        self.recompute = False  # set by ImageVAE.set_gradient_checkpointing
        self.conv_in = nn.Conv2d(config.in_channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList(
            DownBlock2d(widths[max(i - 1, 0)], w, config.layers_per_block, g, downsample=i < len(widths) - 1,
                        dropout=config.dropout)
            for i, w in enumerate(widths)
        )
        self.mid = MidBlock2d(widths[-1], g, config.mid_block_attention, config.dropout)
        self.norm_out = group_norm(widths[-1], g)
        self.conv_out = nn.Conv2d(widths[-1], 2 * config.latent_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)  # (B, w0, H, W)
        for block in self.down:
            h = _run(block, h, self.recompute)  # last: (B, w_last, H/f, W/f)
        h = _run(self.mid, h, self.recompute)
        return self.conv_out(nn.functional.silu(self.norm_out(h)))  # (B, 2 C_lat, H/f, W/f)


class ImageDecoder(nn.Module):
    """z (B, latent_channels, h, w) -> (B, C, h*f, w*f)."""

    def __init__(self, config: ImageVAEConfig) -> None:
        super().__init__()
        widths, g = list(reversed(config.block_out_channels)), config.norm_num_groups  # widest first
        self.recompute = False  # set by ImageVAE.set_gradient_checkpointing
        self.conv_in = nn.Conv2d(config.latent_channels, widths[0], 3, padding=1)
        self.mid = MidBlock2d(widths[0], g, config.mid_block_attention, config.dropout)
        self.up = nn.ModuleList(
            UpBlock2d(widths[max(i - 1, 0)], w, config.layers_per_block + 1, g, upsample=i < len(widths) - 1,
                      dropout=config.dropout)
            for i, w in enumerate(widths)
        )
        self.norm_out = group_norm(widths[-1], g)
        self.conv_out = nn.Conv2d(widths[-1], config.in_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = _run(self.mid, self.conv_in(z), self.recompute)  # (B, w_last, h, w)
        for block in self.up:
            h = _run(block, h, self.recompute)  # last: (B, w0, h f, w f)
        return self.conv_out(nn.functional.silu(self.norm_out(h)))  # (B, C, h f, w f)


@register_model("image_vae")
class ImageVAE(Tokenizer):
    """KL autoencoder for images; see the module docstring. Latent statistics live in `config`."""

    modality = "image"
    config_class = ImageVAEConfig
    # a run-time setting that older exports saved in config.json: dropped on load (mmflow.model_io)
    legacy_config_keys = ("gradient_checkpointing",)

    def __init__(self, config: ImageVAEConfig, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.encoder = ImageEncoder(config)
        self.decoder = ImageDecoder(config)
        c = config.latent_channels
        self.quant_conv = nn.Conv2d(2 * c, 2 * c, 1) if config.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(c, c, 1) if config.use_quant_conv else None
        self.set_gradient_checkpointing(gradient_checkpointing)

    @property
    def gradient_checkpointing(self) -> bool:
        return self.encoder.recompute

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each encoder and decoder level in backward (training only: no-grad calls run plainly)."""
        self.encoder.recompute = self.decoder.recompute = enabled

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    def latent_shape(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        """Image shape (C, H, W) -> latent shape (latent_channels, H/f, W/f)."""
        shape = tuple(shape)
        if len(shape) != 3:
            raise ValueError(f"expected an image shape (C, H, W), got {shape}")
        self._check_image_size(shape[0], shape[1], shape[2])
        f = self.downsample_factor
        return self.config.latent_channels, shape[1] // f, shape[2] // f

    def _check_image_size(self, c: int, h: int, w: int) -> None:
        if c != self.config.in_channels:
            raise ValueError(f"image has {c} channels, this VAE expects in_channels = {self.config.in_channels}")
        f = self.downsample_factor
        if h % f or w % f:
            down = f"{max(f, h // f * f)}x{max(f, w // f * f)}"
            up = f"{-(-h // f) * f}x{-(-w // f) * f}"
            raise ValueError(f"image size {h}x{w} is not divisible by the VAE's downsampling factor {f} "
                             f"(2 ** (levels - 1)); crop to {down} or pad/resize to {up}")

    @staticmethod
    def _check_finite(t: Tensor, what: str) -> None:
        if not torch.isfinite(t).all():
            n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            raise ValueError(f"{what} contains non-finite values ({n_nan} NaN, {n_inf} Inf) of {t.numel()}")

    def last_layer_weight(self) -> nn.Parameter:
        return self.decoder.conv_out.weight

    def _encode_moments(self, x: Tensor) -> Tensor:
        moments = self.encoder(x)  # (B, 2 C_lat, H/f, W/f)
        return moments if self.quant_conv is None else self.quant_conv(moments)

    def _decode_raw(self, z: Tensor) -> Tensor:
        return self.decoder(z if self.post_quant_conv is None else self.post_quant_conv(z))  # (B, C, h f, w f)

    def encode(self, x: Tensor, tile_latent_size: int | None = None,
               tile_overlap: int | None = None) -> DiagonalGaussian:
        """Images (B, C, H, W) in [-1, 1] -> posterior over raw latents, mean/logvar (B, C_lat, H/f, W/f).

        `tile_latent_size`, `tile_overlap` (default: the config's; 0 = no tiling): mmflow.tokenizers.tiling."""
        if x.ndim != 4:
            raise ValueError(f"ImageVAE.encode expects images (B, C, H, W), got shape {tuple(x.shape)}")
        self._check_image_size(*x.shape[1:])
        self._check_finite(x, "ImageVAE.encode input")
        moments = tiled_map(self._encode_moments, x, resolve_tiling(self.config, tile_latent_size, tile_overlap),
                            in_factor=self.downsample_factor)
        mean, logvar = moments.chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar)

    def decode(self, z: Tensor, like_shape: Sequence[int] | None = None, tile_latent_size: int | None = None,
               tile_overlap: int | None = None) -> Tensor:
        """Raw latents (B, C_lat, h, w) -> images (B, C, h f, w f), roughly in [-1, 1] (not clamped).

        `like_shape` is accepted for the common signature: images are never padded, nothing to crop.
        `tile_latent_size`, `tile_overlap` (default: the config's; 0 = no tiling): mmflow.tokenizers.tiling."""
        if z.ndim != 4 or z.shape[1] != self.config.latent_channels:
            raise ValueError(f"ImageVAE.decode expects latents (B, {self.config.latent_channels}, h, w), "
                             f"got shape {tuple(z.shape)}")
        self._check_finite(z, "ImageVAE.decode input")
        return tiled_map(self._decode_raw, z, resolve_tiling(self.config, tile_latent_size, tile_overlap),
                         out_factor=self.downsample_factor)
