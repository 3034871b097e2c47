"""Stable Diffusion 3 / 3.5 transformer weights (diffusers `SD3Transformer2DModel`) -> mmflow MMDiT.

The only module that knows diffusers' key names. Two conventions change at this boundary:

- time: diffusers calls the transformer with timestep = 1000 sigma, sigma = 1 - t. The converted
  config sets time_shift = 1000, time_scale = -1000, so MMDiT's s = 1000 - 1000 t is that timestep.
- sign: SD3 predicts eps - z = -(our velocity z - eps); the final projection (weight and bias) is
  negated, so the converted model outputs our velocity exactly.

Layout changes (exact): q/k/v projections are concatenated into one qkv matrix, the patch conv
becomes a linear map over channels-last patches, and the two `AdaLayerNormContinuous` layers
(final norm; the last block's text norm) have their (scale, shift) halves swapped to our
(shift, scale). The last block's text query (`attn.add_q_proj`, `attn.norm_added_q`) is dropped:
SD3 computes it and then discards its attention output, so it cannot affect the result.

Any key the config does not account for, or that it needs and the checkpoint lacks, is an error
that lists the keys by name.
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
from mmflow.models.mmdit import MMDiT, MMDiTConfig
from mmflow.model_io import DEFAULT_MAX_SHARD_BYTES, save_model

__all__ = ["mmdit_config_from_sd3", "convert_sd3_state_dict", "load_diffusers_sd3", "convert_diffusers_sd3"]

SD3_CLASS_NAME = "SD3Transformer2DModel"
SD3_TIMESTEP_SCALE = 1000.0  # diffusers' timestep = 1000 * sigma

# SD3Transformer2DModel.__init__ defaults (diffusers fills keys absent from config.json with these).
_SD3_DEFAULTS: dict[str, Any] = {
    "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 18, "attention_head_dim": 64,
    "num_attention_heads": 18, "joint_attention_dim": 4096, "caption_projection_dim": 1152,
    "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 96, "dual_attention_layers": (),
    "qk_norm": None,
}


def mmdit_config_from_sd3(diffusers_config: dict[str, Any]) -> MMDiTConfig:
    """MMDiTConfig equivalent to a diffusers SD3Transformer2DModel config (its config.json as a dict)."""
    c = resolve_config(diffusers_config, SD3_CLASS_NAME, _SD3_DEFAULTS)
    hidden = c["num_attention_heads"] * c["attention_head_dim"]
    if c["caption_projection_dim"] != hidden:
        raise ValueError(f"caption_projection_dim {c['caption_projection_dim']} must equal num_attention_heads * "
                         f"attention_head_dim = {hidden} (the text stream runs at the model width)")
    if c["qk_norm"] not in (None, "rms_norm"):
        raise ValueError(f"qk_norm {c['qk_norm']!r} is not supported (SD3 uses None, SD3.5 'rms_norm')")
    if not c["pos_embed_max_size"]:
        raise ValueError("pos_embed_max_size must be set: SD3 weights carry a cropped sincos table")
    p = c["patch_size"]
    config = MMDiTConfig(
        in_channels=c["in_channels"], out_channels=c["out_channels"] or c["in_channels"], patch_size=(p, p),
        hidden_size=hidden, depth=c["num_layers"], num_heads=c["num_attention_heads"], mlp_ratio=4.0,
        context_dim=c["joint_attention_dim"], pooled_dim=c["pooled_projection_dim"], num_classes=0,
        qk_norm=c["qk_norm"], pos_embed="sincos", pos_embed_max_size=c["pos_embed_max_size"],
        pos_embed_base_size=c["sample_size"] // p, dual_attention_layers=tuple(c["dual_attention_layers"]),
        time_shift=SD3_TIMESTEP_SCALE, time_scale=-SD3_TIMESTEP_SCALE, null_text="zeros",
    )
    config.validate()
    return config


def _swap_halves(t: Tensor) -> Tensor:
    """(scale, shift) rows of an AdaLayerNormContinuous linear -> (shift, scale)."""
    scale, shift = t.chunk(2, dim=0)
    return torch.cat([shift, scale], dim=0)


def convert_sd3_state_dict(
    state: dict[str, Tensor], diffusers_config: dict[str, Any]
) -> tuple[MMDiTConfig, dict[str, Tensor]]:
    """(MMDiTConfig, MMDiT state dict) from a diffusers SD3/SD3.5 transformer state dict and its config.

    Raises ValueError naming every missing key, every unexpected key and every shape mismatch.
    """
    config = mmdit_config_from_sd3(diffusers_config)
    src = StateSource(state)
    src.put("pos_table", "pos_embed.pos_embed")
    src.put("x_embedder.weight", "pos_embed.proj.weight", fn=lambda w: w.permute(0, 2, 3, 1).flatten(1))  # (D, p*p*C)
    src.put("x_embedder.bias", "pos_embed.proj.bias")
    src.linear("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1")
    src.linear("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2")
    src.linear("pooled_embedder.0", "time_text_embed.text_embedder.linear_1")
    src.linear("pooled_embedder.2", "time_text_embed.text_embedder.linear_2")
    src.linear("context_embedder", "context_embedder")
    qk = config.qk_norm is not None
    for i in range(config.depth):
        s, d = f"transformer_blocks.{i}", f"blocks.{i}"
        last = i == config.depth - 1
        src.linear(f"{d}.x_modulation", f"{s}.norm1.linear")
        src.qkv(f"{d}.x_qkv", (f"{s}.attn.to_q", f"{s}.attn.to_k", f"{s}.attn.to_v"))
        src.linear(f"{d}.x_proj", f"{s}.attn.to_out.0")
        src.linear(f"{d}.x_mlp.fc1", f"{s}.ff.net.0.proj")
        src.linear(f"{d}.x_mlp.fc2", f"{s}.ff.net.2")
        if qk:
            src.put(f"{d}.x_q_norm.weight", f"{s}.attn.norm_q.weight")
            src.put(f"{d}.x_k_norm.weight", f"{s}.attn.norm_k.weight")
            src.put(f"{d}.c_k_norm.weight", f"{s}.attn.norm_added_k.weight")
        if i in config.dual_attention_layers:
            src.qkv(f"{d}.x_qkv2", (f"{s}.attn2.to_q", f"{s}.attn2.to_k", f"{s}.attn2.to_v"))
            src.linear(f"{d}.x_proj2", f"{s}.attn2.to_out.0")
            if qk:
                src.put(f"{d}.x_q_norm2.weight", f"{s}.attn2.norm_q.weight")
                src.put(f"{d}.x_k_norm2.weight", f"{s}.attn2.norm_k.weight")
        if last:  # context_pre_only: text gives keys/values only; its query is computed by SD3 but unused
            src.linear(f"{d}.c_modulation", f"{s}.norm1_context.linear", fn=_swap_halves)
            src.qkv(f"{d}.c_kv", (f"{s}.attn.add_k_proj", f"{s}.attn.add_v_proj"))
            src.drop(f"{s}.attn.add_q_proj.weight", f"{s}.attn.add_q_proj.bias")
            if qk:
                src.drop(f"{s}.attn.norm_added_q.weight")
        else:
            src.linear(f"{d}.c_modulation", f"{s}.norm1_context.linear")
            src.qkv(f"{d}.c_qkv", (f"{s}.attn.add_q_proj", f"{s}.attn.add_k_proj", f"{s}.attn.add_v_proj"))
            src.linear(f"{d}.c_proj", f"{s}.attn.to_add_out")
            src.linear(f"{d}.c_mlp.fc1", f"{s}.ff_context.net.0.proj")
            src.linear(f"{d}.c_mlp.fc2", f"{s}.ff_context.net.2")
            if qk:
                src.put(f"{d}.c_q_norm.weight", f"{s}.attn.norm_added_q.weight")
    src.linear("final_layer.modulation", "norm_out.linear", fn=_swap_halves)
    src.linear("final_layer.linear", "proj_out", fn=lambda t: -t)  # SD3 predicts -velocity

    return config, src.check(lambda: MMDiT(config), SD3_CLASS_NAME)


def load_diffusers_sd3(folder: str | os.PathLike, dtype: torch.dtype | None = None) -> MMDiT:
    """MMDiT with the weights of a diffusers SD3Transformer2DModel folder (config.json + safetensors,
    sharded or not; a pipeline folder's transformer/ also works). dtype None keeps the checkpoint's."""
    folder = component_folder(Path(folder), "transformer", SD3_CLASS_NAME)
    diffusers_config = read_config(folder)  # first: a bad config.json fails before gigabytes of weights are read
    config, state = convert_sd3_state_dict(read_weights(folder), diffusers_config)
    return instantiate(lambda: MMDiT(config), state, dtype)


def convert_diffusers_sd3(src: str | os.PathLike, dst: str | os.PathLike, dtype: torch.dtype | None = None,
                          max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> Path:
    """Convert a diffusers SD3 transformer folder into an mmflow model folder (config.json + model.safetensors)."""
    return save_model(load_diffusers_sd3(src, dtype=dtype), dst, max_shard_bytes=max_shard_bytes)
