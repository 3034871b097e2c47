"""diffusers `AutoencoderKL` weights (SD1.x, SDXL, SD3, Flux VAEs) -> mmflow ImageVAE.

The only module that knows diffusers' VAE key names and config keys. The computation is identical;
what changes at this boundary:

- names: `down_blocks.i.resnets.j` -> `down.i.res.j`, `downsamplers.0` -> `downsample`,
  `conv_shortcut` -> `skip`, `mid_block.resnets.0/1` -> `mid.res1/res2`, `conv_norm_out` -> `norm_out`;
- the mid-block attention's separate to_q / to_k / to_v linears become one fused `qkv` (concatenated
  rows), `to_out.0` becomes `proj` (pre-0.14 names query/key/value/proj_attn are accepted as well);
- latent statistics: diffusers scales latents as (z - shift_factor) * scaling_factor (SD1/SDXL have
  no shift; a few VAEs carry per-channel latents_mean / latents_std, used as
  (z - mean) * scaling_factor / std). Both become our per-channel latent_shift / latent_scale, so
  `ImageVAE.encode_latents` equals what the diffusers pipelines feed their denoiser.

Any key the config does not account for, or that it needs and the checkpoint lacks, is an error that
lists the keys by name; so are config values this architecture cannot express.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmflow.interop.diffusers_common import (
    StateSource,
    component_folder,
    instantiate,
    read_config,
    read_weights,
    resolve_config,
)
from mmflow.model_io import DEFAULT_MAX_SHARD_BYTES, save_model
from mmflow.tokenizers.image_vae import ImageVAE, ImageVAEConfig

__all__ = ["image_vae_config_from_diffusers", "convert_diffusers_vae_state_dict", "load_diffusers_vae",
           "convert_diffusers_vae"]

VAE_CLASS_NAME = "AutoencoderKL"

# AutoencoderKL.__init__ defaults (diffusers fills keys absent from config.json with these).
_VAE_DEFAULTS: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",),
    "up_block_types": ("UpDecoderBlock2D",), "block_out_channels": (64,), "layers_per_block": 1, "act_fn": "silu",
    "latent_channels": 4, "norm_num_groups": 32, "sample_size": 32, "scaling_factor": 0.18215,
    "shift_factor": None, "latents_mean": None, "latents_std": None, "force_upcast": True, "use_quant_conv": True,
    "use_post_quant_conv": True, "mid_block_add_attention": True,
}
_IGNORED = ("sample_size", "force_upcast")  # tiling and fp16 policy of diffusers, not architecture


def _latent_stats(c: dict[str, Any]) -> tuple[list[float], list[float]]:
    """diffusers' scaling_factor / shift_factor / latents_mean / latents_std -> per-channel (shift, scale)."""
    n, scaling = c["latent_channels"], float(c["scaling_factor"])
    mean, std, shift = c["latents_mean"], c["latents_std"], c["shift_factor"]
    if (mean is None) != (std is None):
        raise ValueError("latents_mean and latents_std must be given together, got only "
                         f"{'latents_mean' if std is None else 'latents_std'}")
    if mean is not None:
        if shift is not None:
            raise ValueError("shift_factor and latents_mean are both set; diffusers pipelines use one or the other")
        for name, v in (("latents_mean", mean), ("latents_std", std)):
            if len(v) != n:
                raise ValueError(f"{name} has {len(v)} entries but latent_channels is {n}")
        return [float(m) for m in mean], [scaling / float(s) for s in std]
    return [float(shift or 0.0)] * n, [scaling] * n


def image_vae_config_from_diffusers(diffusers_config: dict[str, Any]) -> ImageVAEConfig:
    """ImageVAEConfig equivalent to a diffusers AutoencoderKL config (its config.json as a dict)."""
    c = resolve_config(diffusers_config, VAE_CLASS_NAME, _VAE_DEFAULTS)
    levels = len(c["block_out_channels"])
    problems = []
    if c["out_channels"] != c["in_channels"]:
        problems.append(f"out_channels {c['out_channels']} != in_channels {c['in_channels']} (a tokenizer "
                        "reconstructs its input)")
    if c["act_fn"] != "silu":
        problems.append(f"act_fn {c['act_fn']!r} (only 'silu')")
    for key, block in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        if list(c[key]) != [block] * levels:
            problems.append(f"{key} {list(c[key])} (expected {levels} x {block!r}, one per block_out_channels)")
    if c["use_quant_conv"] != c["use_post_quant_conv"]:
        problems.append(f"use_quant_conv {c['use_quant_conv']} with use_post_quant_conv "
                        f"{c['use_post_quant_conv']} (both or neither)")
    if problems:
        raise ValueError(f"unsupported {VAE_CLASS_NAME} config: " + "; ".join(problems))
    shift, scale = _latent_stats(c)
    config = ImageVAEConfig(
        in_channels=c["in_channels"], latent_channels=c["latent_channels"],
        block_out_channels=tuple(c["block_out_channels"]), layers_per_block=c["layers_per_block"],
        norm_num_groups=c["norm_num_groups"], mid_block_attention=bool(c["mid_block_add_attention"]),
        use_quant_conv=bool(c["use_quant_conv"]), latent_shift=shift, latent_scale=scale,
    )
    config.validate()
    return config


class _Source(StateSource):
    """StateSource with the VAE's building blocks (resnets, attention, mid block)."""

    def module(self, dst: str, src: str, legacy: str | None = None) -> None:
        """weight and bias of a conv, linear or norm."""
        for suffix in ("weight", "bias"):
            t = self.take(f"{src}.{suffix}", None if legacy is None else f"{legacy}.{suffix}")
            if t is not None:
                self.out[f"{dst}.{suffix}"] = t

    def resnet(self, dst: str, src: str, changes_width: bool) -> None:
        for name in ("norm1", "conv1", "norm2", "conv2"):
            self.module(f"{dst}.{name}", f"{src}.{name}")
        if changes_width:
            self.module(f"{dst}.skip", f"{src}.conv_shortcut")

    def attention(self, dst: str, src: str) -> None:
        self.module(f"{dst}.norm", f"{src}.group_norm")
        for suffix in ("weight", "bias"):
            parts = [self.take(f"{src}.{new}.{suffix}", f"{src}.{old}.{suffix}")
                     for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"))]
            if all(p is not None for p in parts):
                self.out[f"{dst}.qkv.{suffix}"] = torch.cat(parts, dim=0)  # rows: q, k, v
        self.module(f"{dst}.proj", f"{src}.to_out.0", legacy=f"{src}.proj_attn")

    def mid(self, dst: str, src: str, attention: bool) -> None:
        self.resnet(f"{dst}.res1", f"{src}.resnets.0", False)
        if attention:
            self.attention(f"{dst}.attn", f"{src}.attentions.0")
        self.resnet(f"{dst}.res2", f"{src}.resnets.1", False)


def convert_diffusers_vae_state_dict(
    state: dict[str, Tensor], diffusers_config: dict[str, Any]
) -> tuple[ImageVAEConfig, dict[str, Tensor]]:
    """(ImageVAEConfig, ImageVAE state dict) from a diffusers AutoencoderKL state dict and its config.

    Raises ValueError naming every missing key, every unexpected key and every shape mismatch.
    """
    config = image_vae_config_from_diffusers(diffusers_config)
    widths, n = list(config.block_out_channels), config.layers_per_block
    src = _Source(state)
    for side in ("encoder", "decoder"):
        src.module(f"{side}.conv_in", f"{side}.conv_in")
        src.mid(f"{side}.mid", f"{side}.mid_block", config.mid_block_attention)
        src.module(f"{side}.norm_out", f"{side}.conv_norm_out")
        src.module(f"{side}.conv_out", f"{side}.conv_out")
    for i, w in enumerate(widths):  # encoder: narrow to wide, downsample after every level but the last
        for j in range(n):
            src.resnet(f"encoder.down.{i}.res.{j}", f"encoder.down_blocks.{i}.resnets.{j}",
                       j == 0 and widths[max(i - 1, 0)] != w)
        if i < len(widths) - 1:
            src.module(f"encoder.down.{i}.downsample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv")
    rev = widths[::-1]
    for i, w in enumerate(rev):  # decoder: wide to narrow, one resnet more per level
        for j in range(n + 1):
            src.resnet(f"decoder.up.{i}.res.{j}", f"decoder.up_blocks.{i}.resnets.{j}",
                       j == 0 and rev[max(i - 1, 0)] != w)
        if i < len(rev) - 1:
            src.module(f"decoder.up.{i}.upsample.conv", f"decoder.up_blocks.{i}.upsamplers.0.conv")
    if config.use_quant_conv:
        src.module("quant_conv", "quant_conv")
        src.module("post_quant_conv", "post_quant_conv")

    return config, src.check(lambda: ImageVAE(config), VAE_CLASS_NAME)


def load_diffusers_vae(folder: str | os.PathLike, dtype: torch.dtype | None = None) -> ImageVAE:
    """ImageVAE with the weights of a diffusers AutoencoderKL folder (config.json + safetensors, sharded
    or not; a pipeline folder's vae/ also works). dtype None keeps the checkpoint's."""
    folder = component_folder(Path(folder), "vae", VAE_CLASS_NAME)
    diffusers_config = read_config(folder)  # first: a bad config.json fails before the weights are read
    config, state = convert_diffusers_vae_state_dict(read_weights(folder), diffusers_config)
    return instantiate(lambda: ImageVAE(config), state, dtype)


def convert_diffusers_vae(src: str | os.PathLike, dst: str | os.PathLike, dtype: torch.dtype | None = None,
                          max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> Path:
    """Convert a diffusers AutoencoderKL folder into an mmflow model folder (config.json + model.safetensors)."""
    return save_model(load_diffusers_vae(src, dtype=dtype), dst, max_shard_bytes=max_shard_bytes)
