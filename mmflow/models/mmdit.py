"""MM-DiT: Stable Diffusion 3's multimodal diffusion transformer, for audio, image and video latents.

u_theta(x, t, cond): x (B, C, *S) latent (S = (L,), (H, W) or (T, H, W), fixed by len(patch_size)),
t (B,) flow time in [0, 1] (0 = noise, 1 = data), cond a dict with the keys the config asks for:

    "text"      (B, S_txt, context_dim)  text-encoder tokens        (context_dim > 0)
    "text_mask" (B, S_txt) bool          True = real token, optional (padded tokens are invisible)
    "pooled"    (B, pooled_dim)          pooled text embedding      (pooled_dim > 0)
    "label"     (B,) long                class label, num_classes = null  (num_classes > 0)
    "concat"    (B, concat_channels, *S) joined to x along channels before patchify, optional
                                         (concat_channels > 0; absent = zeros): e.g. image-to-video's
                                         first-frame latents and mask, not part of CFG's null
    "frames"    (B,) long                video: latent frames of each row that are real, optional; the
                                         tokens of later (padded) frames are invisible as keys, so an image
                                         (1 frame) padded into a clip batch is computed as on its own
                                         (joint image+video training); not part of CFG's null
    <name>      (B,) float               each of scalar_conditions, e.g. stable-audio's timing
                                         "seconds_start" / "seconds_total": the clip's place and length in
                                         seconds, so one model makes clips of any length that end cleanly;
                                         not part of CFG's null

With interval_embed (MeanFlow, mmflow/flow/meanflow.py) a second time input h (B,), the length of the
jump from t towards data, goes through its own time embedding into c, and the output is the average
velocity over [t, t + h]; h = 0 (or None) is the instantaneous velocity, as without it.

Returns the velocity (B, C_out, *S). Video is just more tokens (MovieGen): latents are patchified
to one sequence whatever their rank, with RoPE over 1-3 grid axes. Each block runs two token
streams (latent patches and text), each with its own adaLN-Zero modulation, QKV, output projection
and MLP, and ONE joint attention over the concatenated sequence (SD3's JointTransformerBlock);
the last block only supplies keys and values from the text stream (SD3's context_pre_only). The
conditioning vector is c = time embedding + pooled-text projection (+ label embedding) (+ interval embedding).
Text tokens carry no positions of their own (SD3: order is whatever the encoder's states hold); with
text_positions a learned vector per token index is added after the context projection, so word order
("a red star left of a blue circle" vs "a blue circle left of a red star") need not be read out of them. With
text_whitening the tokens are whitened over the training captions first (buffers text_mean, text_whiten), so the
faint direction in which the encoder's states do hold the order is as strong as the words' own.

Run-time settings, not saved with the model: `MMDiT(config, attention_backend=..., gradient_checkpointing=...)`
or later `model.set_attention_backend("math")` / `model.set_gradient_checkpointing(True)`.

Time enters as s = time_shift + time_scale * t through the sinusoidal embedding; SD3 weights
(converted in mmflow.interop) use shift 1000, scale -1000, i.e. s = 1000 sigma.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mmflow.config import check, preset_config
from mmflow.flow.cfg import apply_condition_dropout
from mmflow.models.attention import attention, plain_kernels_active, resolve_attention_backend
from mmflow.models.embeddings import LabelEmbedder, adopt_missing_weights, interval_input, timestep_embedding
from mmflow.models.patchify import check_latent, patchify, unpatchify
from mmflow.model_io import register_model
from mmflow.models.rope import apply_rope, crop_sincos_table, rope_angles, sincos_2d_table
from mmflow.text.whitening import Whitening

__all__ = ["MMDiTConfig", "MMDiT", "MMDiTBlock", "MMDIT_PRESETS", "mmdit_config"]

KEPT_THROUGH_DROPOUT = ("concat", "frames")  # condition entries that describe the input, not the prompt
SCALAR_SCALE = 10.0  # a scalar condition s enters the sinusoidal embedding as 10 s
TIME_FREQUENCY_DIM = 256  # sinusoidal features of s before the time MLP (SD3 and DiT use 256)


def _field(default: Any, doc: str = "", **bounds: Any) -> Any:
    """A config field with its help text and bounds (checked by mmflow.config.from_dict)."""
    return field(default=default, metadata={"help": doc, **bounds})


@dataclass
class MMDiTConfig:
    in_channels: int = _field(4, "latent channels", min=1)
    out_channels: int | None = _field(None, "None = in_channels", min=1)
    patch_size: tuple[int, ...] = _field((2, 2), "one per latent axis; 1/2/3 entries = audio/image/video", min=1)
    hidden_size: int = _field(384, "token width of both streams", min=1)
    depth: int = _field(12, "number of joint blocks", min=1)
    num_heads: int = _field(6, "head_dim = hidden_size / num_heads", min=1)
    mlp_ratio: float = _field(4.0, "MLP hidden width / hidden_size", min=0, min_exclusive=True)
    context_dim: int = _field(0, "text token width; 0 = no text stream", min=0)
    pooled_dim: int = _field(0, "pooled text width; 0 = none", min=0)
    num_classes: int = _field(0, "0 = no labels; index num_classes is the null label", min=0)
    concat_channels: int = _field(0, "channels of cond['concat'] joined to x (image-to-video); 0 = none", min=0)
    scalar_conditions: tuple[str, ...] = _field((), "names of per-row numbers in cond (e.g. seconds_start, "
                                                    "seconds_total), each embedded and added to the conditioning")
    qk_norm: Literal["rms_norm"] | None = _field(None, "per-head RMSNorm of q and k (SD3.5)")
    pos_embed: Literal["rope", "sincos"] = _field("rope", "rope: any rank and size; sincos: SD3's 2-D table")
    pos_embed_max_size: int = _field(96, "sincos: side of the square table, in patches", min=1)
    pos_embed_base_size: int = _field(0, "sincos: positions scaled by base / max (SD3: sample_size // patch); "
                                         "0 = max", min=0)
    rope_theta: float = _field(10000.0, "rope: base of the frequencies", min=0, min_exclusive=True)
    dual_attention_layers: tuple[int, ...] = _field((), "blocks with SD3.5's extra latent self-attention", min=0)
    time_shift: float = _field(0.0, "time embedding input s = time_shift + time_scale * t")
    time_scale: float = _field(1000.0, "(SD3 weights: shift 1000, scale -1000, i.e. s = 1000 sigma)")
    null_text: Literal["learned", "zeros"] = _field("learned", "CFG null condition: learned text + pooled, or zeros")
    null_text_length: int = _field(1, "learned null tokens; the null text is masked after them", min=1)
    interval_embed: bool = _field(False, "MeanFlow: embed a second time input h (the jump length) into c; its "
                                         "output starts at zero, so a flow model gaining it starts unchanged")
    text_positions: int = _field(0, "learned position vectors added to the first this-many text tokens (0 = none, "
                                    "as SD3): word order then reaches the model beyond what the text encoder's "
                                    "states carry; they start at zero, so a model gaining them starts unchanged",
                                 min=0)
    text_refiner: int = _field(0, "text-only blocks over the text tokens before the joint blocks (Lumina-Image 2's "
                                  "context refiner, HunyuanVideo's token refiner): the words attend to each other "
                                  "alone, modulated by t and the pooled text, so what a word means in its caption "
                                  "(which object is left of which) is worked out before the latents read it; they "
                                  "start as the identity, so a model gaining them starts unchanged", min=0)
    text_whitening: bool = _field(False, "whiten the text tokens before the context embedder, x -> (x - mean) W over "
                                         "the training captions' token states (mmflow/text/whitening.py): word "
                                         "order becomes as strong an input direction as the words; the statistics "
                                         "are buffers, measured at a run's start and saved with the weights; a "
                                         "model gaining it starts unchanged (the context embedder absorbs W^-1)")
    abs_positions: bool = _field(False, "rope: also add a fixed sinusoidal table of each latent token's grid "
                                        "coordinates (the rope angles' sin and cos at the model's width): RoPE is "
                                        "relative only, and a token far from both ends cannot tell where in the "
                                        "clip it sits (which note of a melody)")
    # The attention backend and gradient checkpointing are run-time settings of MMDiT, not fields here:
    # an exported config.json describes the weights, not the machine that trained them.

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def resolved(self) -> "MMDiTConfig":
        """This config with its defaults spelled out (out_channels, pos_embed_base_size): equal models compare equal."""
        return replace(self, out_channels=self.out_channels or self.in_channels,
                       pos_embed_base_size=self.pos_embed_base_size or self.pos_embed_max_size)

    def validate(self) -> None:
        k = len(self.patch_size)
        check(k in (1, 2, 3), "patch_size",
              f"needs 1, 2 or 3 entries (audio, image, video), got {list(self.patch_size)}")
        check(self.hidden_size % self.num_heads == 0, "num_heads",
              f"{self.num_heads} does not divide hidden_size {self.hidden_size}")
        if self.pos_embed == "rope":
            check(self.head_dim % 2 == 0 and self.head_dim // 2 >= k, "pos_embed",
                  f"rope over {k} axes needs an even head_dim >= {2 * k}, got {self.head_dim}")
        else:
            check(k == 2, "pos_embed",
                  f"sincos is SD3's 2-D table; patch_size {list(self.patch_size)} is not 2-D (use rope)")
            check(self.hidden_size % 4 == 0, "hidden_size", f"sincos needs a multiple of 4, got {self.hidden_size}")
        check(not self.abs_positions or self.pos_embed == "rope", "abs_positions",
              "adds to rope's relative positions; sincos positions are absolute already")
        taken = {"text", "text_mask", "pooled", "label", "concat", "frames"}
        clash = sorted(set(self.scalar_conditions) & taken)
        check(not clash and len(set(self.scalar_conditions)) == len(self.scalar_conditions), "scalar_conditions",
              f"names must be distinct and not {sorted(taken)}, got {list(self.scalar_conditions)}")
        check(not self.text_positions or self.context_dim, "text_positions",
              f"{self.text_positions} positions, but the model has no text stream (context_dim 0)")
        check(not self.text_whitening or self.context_dim, "text_whitening",
              "whitens the text tokens, but the model has no text stream (context_dim 0)")
        check(not self.text_refiner or self.context_dim, "text_refiner",
              f"{self.text_refiner} refiner blocks, but the model has no text stream (context_dim 0)")
        bad = [i for i in self.dual_attention_layers if i >= self.depth]
        check(not bad, "dual_attention_layers", f"indices {bad} are not blocks of a depth-{self.depth} model")


# Size presets (DiT's S/B/L/XL, SD3's widths, and tiny ones for tests); other fields come from the caller.
MMDIT_PRESETS: dict[str, dict[str, Any]] = {
    "test": dict(hidden_size=32, depth=2, num_heads=2),  # unit tests
    "tiny": dict(hidden_size=64, depth=2, num_heads=4),  # CPU smoke runs
    "S": dict(hidden_size=384, depth=12, num_heads=6),
    "B": dict(hidden_size=768, depth=12, num_heads=12),
    "L": dict(hidden_size=1024, depth=24, num_heads=16),
    "XL": dict(hidden_size=1152, depth=28, num_heads=16),
    "SD3-2B": dict(hidden_size=1536, depth=24, num_heads=24),  # SD3 / SD3.5 medium widths
    "SD3.5-8B": dict(hidden_size=2432, depth=38, num_heads=38),  # SD3.5 large
}


def mmdit_config(preset: str, **overrides: Any) -> MMDiTConfig:
    """MMDiTConfig of a named size preset (MMDIT_PRESETS) with `overrides` applied, validated."""
    return preset_config(MMDiTConfig, MMDIT_PRESETS, preset, "MM-DiT", **overrides)


def frame_token_mask(frames: Tensor, grid: tuple[int, ...], patch_t: int) -> Tensor:
    """(B, N) bool: the tokens of video latents on `grid` (g_t, g_h, g_w) whose latent frames are among
    the first frames[b] of row b (frames (B,) long, 1..g_t * patch_t); tokens are ordered t-major."""
    if frames.ndim != 1 or frames.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"cond['frames'] must be a (B,) integer tensor of latent frame counts, got "
                         f"{frames.dtype} {tuple(frames.shape)}")
    total = grid[0] * patch_t
    if not torch.compiler.is_compiling() and bool(((frames < 1) | (frames > total)).any()):
        raise ValueError(f"cond['frames'] must lie in [1, {total}] (the latents' frames), got {frames.tolist()}")
    token_t = torch.arange(grid[0], device=frames.device).repeat_interleave(math.prod(grid[1:]))  # (N,)
    return token_t[None] * patch_t < frames[:, None]  # (B, N): a token is real if its first frame is


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x (B, N, D) * (1 + scale) + shift, with shift, scale (B, D)."""
    # one fused kernel over (B, N, D) instead of a multiply and an add (and one tensor less for backward)
    return torch.addcmul(shift[:, None], x, 1 + scale[:, None])


def gated(residual: Tensor, gate: Tensor, update: Tensor) -> Tensor:
    """residual (B, N, D) + gate (B, D) * update (B, N, D), fused (adaLN-Zero's gated residual)."""
    return torch.addcmul(residual, gate[:, None], update)


# ---------------------------------------------------------------------------------------------------
# Embedders
# ---------------------------------------------------------------------------------------------------


class TimeEmbedder(nn.Module):
    """t (B,) -> (B, hidden): sinusoidal features of s = shift + scale * t, then a two-layer MLP."""

    def __init__(self, hidden: int, shift: float, scale: float) -> None:
        super().__init__()
        self.shift, self.scale = shift, scale
        self.mlp = nn.Sequential(nn.Linear(TIME_FREQUENCY_DIM, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: Tensor) -> Tensor:
        s = self.shift + self.scale * t.to(torch.promote_types(t.dtype, torch.float32))  # (B,), float64 kept
        return self.mlp(timestep_embedding(s, TIME_FREQUENCY_DIM, scale=1.0).to(self.mlp[0].weight.dtype))


class _GeluLinear(torch.autograd.Function):
    """linear(gelu_tanh(a), W, b) that keeps only `a` for backward and recomputes the GELU there.

    Plain autograd keeps both a (for GELU's backward) and gelu(a) (for the linear's weight gradient),
    two (B, N, mlp_hidden) tensors, the largest activations of a block; the recompute is one
    elementwise pass, so the MLP's saved activations halve for no measurable time.
    """

    @staticmethod
    def forward(ctx: Any, a: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        h = F.gelu(a, approximate="tanh")  # under autocast, F.linear below casts as a plain module would
        out = F.linear(h, weight, bias)
        ctx.save_for_backward(a, weight)
        ctx.dtypes = (h.dtype, out.dtype)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a, weight = ctx.saved_tensors
        h_dtype, out_dtype = ctx.dtypes
        g = grad_out.to(out_dtype)
        h = F.gelu(a, approximate="tanh").to(out_dtype)  # (..., mlp_hidden), recomputed
        w = weight.to(out_dtype)
        grad_h = g @ w  # (..., mlp_hidden)
        g2 = g.reshape(-1, g.shape[-1])  # (tokens, hidden)
        grad_w = (g2.t() @ h.reshape(-1, h.shape[-1])).to(weight.dtype)  # (hidden, mlp_hidden)
        grad_b = g2.sum(0).to(weight.dtype)
        grad_a = torch.ops.aten.gelu_backward(grad_h.to(a.dtype), a, approximate="tanh")
        return grad_a, grad_w, grad_b


class Mlp(nn.Module):
    """Token-wise MLP with tanh-GELU, (B, N, D) -> (B, N, D); the GELU is recomputed in backward."""

    def __init__(self, hidden: int, mlp_hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, mlp_hidden)
        self.fc2 = nn.Linear(mlp_hidden, hidden)

    def forward(self, x: Tensor) -> Tensor:
        a = self.fc1(x)  # (B, N, mlp_hidden)
        # the fused path reads fc2's weight itself: a wrapped fc2 (a LoRA adapter) must be called instead
        # (nor can forward-mode AD see into the fused autograd.Function: plain ops inside plain_kernels())
        fusable = type(self.fc2) is nn.Linear and not plain_kernels_active()
        if fusable and torch.is_grad_enabled() and (a.requires_grad or self.fc2.weight.requires_grad):
            return _GeluLinear.apply(a, self.fc2.weight, self.fc2.bias)
        return self.fc2(F.gelu(a, approximate="tanh"))


# ---------------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------------


class HeadRMSNorm(nn.RMSNorm):
    """Per-head RMSNorm of q or k (..., D), computed in the weight's precision and returned in the input's:
    under bf16 autocast a bf16 input against fp32 weights has no fused kernel (a warning and a slow path),
    and the mean square is better taken in fp32 anyway."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.to(self.weight.dtype)).to(x.dtype)


class MMDiTBlock(nn.Module):
    """Joint block: latent stream x_* and text stream c_*, one attention over [latent; text] tokens.

    context_pre_only (the last block): the text stream only supplies keys and values, so it has no
    query, output projection or MLP, and its modulation is (shift, scale) only. dual_attention adds
    SD3.5's second self-attention over the latent tokens alone, modulated from the same normed input.
    """

    def __init__(self, hidden: int, num_heads: int, mlp_hidden: int, has_context: bool, context_pre_only: bool,
                 dual_attention: bool, qk_norm: str | None, backend: str) -> None:
        super().__init__()
        self.num_heads, self.backend = num_heads, backend
        self.has_context, self.context_pre_only, self.dual_attention = has_context, context_pre_only, dual_attention
        head_dim = hidden // num_heads

        def qk_norm_layer() -> nn.Module:
            return HeadRMSNorm(head_dim, eps=1e-6) if qk_norm == "rms_norm" else nn.Identity()

        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)  # no parameters: shared
        self.x_modulation = nn.Linear(hidden, (9 if dual_attention else 6) * hidden)
        self.x_qkv = nn.Linear(hidden, 3 * hidden)
        self.x_q_norm, self.x_k_norm = qk_norm_layer(), qk_norm_layer()
        self.x_proj = nn.Linear(hidden, hidden)
        self.x_mlp = Mlp(hidden, mlp_hidden)
        if dual_attention:
            self.x_qkv2 = nn.Linear(hidden, 3 * hidden)
            self.x_q_norm2, self.x_k_norm2 = qk_norm_layer(), qk_norm_layer()
            self.x_proj2 = nn.Linear(hidden, hidden)
        if has_context and context_pre_only:
            self.c_modulation = nn.Linear(hidden, 2 * hidden)
            self.c_kv = nn.Linear(hidden, 2 * hidden)
            self.c_k_norm = qk_norm_layer()
        elif has_context:
            self.c_modulation = nn.Linear(hidden, 6 * hidden)
            self.c_qkv = nn.Linear(hidden, 3 * hidden)
            self.c_q_norm, self.c_k_norm = qk_norm_layer(), qk_norm_layer()
            self.c_proj = nn.Linear(hidden, hidden)
            self.c_mlp = Mlp(hidden, mlp_hidden)

    def _heads(self, x: Tensor, n: int) -> tuple[Tensor, ...]:
        """(B, N, n * D) -> n tensors (B, H, N, D / H)."""
        b, s, _ = x.shape
        return x.view(b, s, n, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)

    def _self_attention2(self, x_in: Tensor, rope: tuple[Tensor, Tensor] | None, key_mask: Tensor | None) -> Tensor:
        """SD3.5's latent-only self-attention; key_mask (B, N) or None."""
        q, k, v = self._heads(self.x_qkv2(x_in), 3)  # (B, H, N, Dh) each
        q, k = self.x_q_norm2(q), self.x_k_norm2(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = attention(q, k, v, key_mask, self.backend)  # (B, H, N, Dh)
        return self.x_proj2(out.transpose(1, 2).flatten(2))  # (B, N, D)

    def forward(self, x: Tensor, ctx: Tensor | None, c: Tensor, rope: tuple[Tensor, Tensor] | None,
                key_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """x (B, N, D) latent tokens, ctx (B, S, D) text tokens or None, c (B, D) conditioning,
        rope (cos, sin) each (N, Dh/2) or None, key_mask (B, N + S) bool or None -> (x, ctx or None)."""
        n = x.shape[1]
        c = F.silu(c)  # once for both streams' modulations
        mods = self.x_modulation(c).chunk(9 if self.dual_attention else 6, dim=-1)  # each (B, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods[:6]
        x_norm = self.norm(x)  # (B, N, D)
        q, k, v = self._heads(self.x_qkv(modulate(x_norm, shift_msa, scale_msa)), 3)  # (B, H, N, Dh) each
        q, k = self.x_q_norm(q), self.x_k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if ctx is not None and self.context_pre_only:
            c_shift, c_scale = self.c_modulation(c).chunk(2, dim=-1)  # (B, D) each
            ck, cv = self._heads(self.c_kv(modulate(self.norm(ctx), c_shift, c_scale)), 2)  # (B, H, S, Dh) each
            k, v = torch.cat([k, self.c_k_norm(ck)], dim=2), torch.cat([v, cv], dim=2)  # (B, H, N + S, Dh)
        elif ctx is not None:
            c_mods = self.c_modulation(c).chunk(6, dim=-1)  # each (B, D)
            c_shift_msa, c_scale_msa, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = c_mods
            cq, ck, cv = self._heads(self.c_qkv(modulate(self.norm(ctx), c_shift_msa, c_scale_msa)), 3)  # (B, H, S, Dh)
            q = torch.cat([q, self.c_q_norm(cq)], dim=2)  # (B, H, N + S, Dh)
            k = torch.cat([k, self.c_k_norm(ck)], dim=2)
            v = torch.cat([v, cv], dim=2)
        out = attention(q, k, v, key_mask, self.backend).transpose(1, 2).flatten(2)  # (B, N (+ S), D)

        x = gated(x, gate_msa, self.x_proj(out[:, :n]))  # (B, N, D)
        if self.dual_attention:
            shift_msa2, scale_msa2, gate_msa2 = mods[6:]
            latent_keys = None if key_mask is None else key_mask[:, :n]  # (B, N): padded frames, if any
            x = gated(x, gate_msa2, self._self_attention2(modulate(x_norm, shift_msa2, scale_msa2), rope, latent_keys))
        x = gated(x, gate_mlp, self.x_mlp(modulate(self.norm(x), shift_mlp, scale_mlp)))

        if ctx is None or self.context_pre_only:
            return x, None
        ctx = gated(ctx, c_gate_msa, self.c_proj(out[:, n:]))  # (B, S, D)
        ctx = gated(ctx, c_gate_mlp, self.c_mlp(modulate(self.norm(ctx), c_shift_mlp, c_scale_mlp)))
        return x, ctx


# ---------------------------------------------------------------------------------------------------
# Final layer
# ---------------------------------------------------------------------------------------------------


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then a linear map of each token to its patch: (B, N, D) -> (B, N, prod(p) * C_out)."""

    def __init__(self, hidden: int, out_features: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Linear(hidden, 2 * hidden)
        self.linear = nn.Linear(hidden, out_features)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.modulation(F.silu(c)).chunk(2, dim=-1)  # (B, D) each
        return self.linear(modulate(self.norm(x), shift, scale))


# ---------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------


AttentionBackend = Literal["auto", "sdpa", "xformers", "math"]


@register_model("mmdit")
class MMDiT(nn.Module):
    config_class = MMDiTConfig
    # run-time settings that older exports saved in config.json: dropped on load (mmflow.model_io)
    legacy_config_keys = ("attention_backend", "gradient_checkpointing")
    # train.init_from: adapt_init_state widens these
    init_adaptable_fields = ("concat_channels", "interval_embed", "text_positions", "text_refiner", "text_whitening")

    def __init__(self, config: MMDiTConfig, attention_backend: AttentionBackend = "auto",
                 gradient_checkpointing: bool = False) -> None:
        super().__init__()
        config.validate()
        self.config = config
        h, p = config.hidden_size, tuple(config.patch_size)
        self.out_channels = config.out_channels or config.in_channels
        self.backend = resolve_attention_backend(attention_backend)
        self.gradient_checkpointing = gradient_checkpointing

        self.x_embedder = nn.Linear(math.prod(p) * (config.in_channels + config.concat_channels), h)  # a patch -> a token
        self.t_embedder = TimeEmbedder(h, config.time_shift, config.time_scale)
        self.pooled_embedder = (nn.Sequential(nn.Linear(config.pooled_dim, h), nn.SiLU(), nn.Linear(h, h))
                                if config.pooled_dim else None)
        self.label_embedder = LabelEmbedder(config.num_classes, h) if config.num_classes else None
        # numbers like seconds: sinusoidal features at 0.1-unit resolution (frequencies 10 .. 10^-3 per unit)
        self.scalar_embedders = nn.ModuleDict({n: TimeEmbedder(h, 0.0, SCALAR_SCALE) for n in config.scalar_conditions})
        # MeanFlow's jump length h >= 0 at the time embedding's frequencies (h = 0 -> s = 0 for any time_shift)
        self.interval_embedder = TimeEmbedder(h, 0.0, abs(config.time_scale)) if config.interval_embed else None
        self.context_embedder = nn.Linear(config.context_dim, h) if config.context_dim else None
        # (S_max, D): zero-init in initialize_weights; added after context_embedder, so any encoder width fits
        self.text_pos = nn.Parameter(torch.zeros(config.text_positions, h)) if config.text_positions else None
        if config.text_whitening:  # the identity until measured (set_text_whitening); count 0 = not measured
            d = config.context_dim
            self.register_buffer("text_mean", torch.zeros(d))  # (D_ctx,)
            self.register_buffer("text_whiten", torch.eye(d))  # (D_ctx, D_ctx)
            self.register_buffer("text_whiten_count", torch.zeros((), dtype=torch.long))
        learned = config.null_text == "learned"
        self.null_tokens = (nn.Parameter(torch.zeros(config.null_text_length, config.context_dim))
                          if learned and config.context_dim else None)
        self.null_pooled = nn.Parameter(torch.zeros(config.pooled_dim)) if learned and config.pooled_dim else None
        if config.pos_embed == "sincos":  # persistent, as SD3 stores it: converted weights bring their table
            table = sincos_2d_table(h, config.pos_embed_max_size, config.pos_embed_base_size or None)
            self.register_buffer("pos_table", table[None])  # (1, M * M, D)

        mlp_hidden = int(h * config.mlp_ratio)
        self.blocks = nn.ModuleList(
            MMDiTBlock(h, config.num_heads, mlp_hidden, has_context=bool(config.context_dim),
                       context_pre_only=i == config.depth - 1, dual_attention=i in config.dual_attention_layers,
                       qk_norm=config.qk_norm, backend=self.backend)
            for i in range(config.depth)
        )
        # text-only blocks: the joint block without a context stream, run on the text tokens as its "latents"
        self.text_refiner = nn.ModuleList(
            MMDiTBlock(h, config.num_heads, mlp_hidden, has_context=False, context_pre_only=False,
                       dual_attention=False, qk_norm=config.qk_norm, backend=self.backend)
            for _ in range(config.text_refiner)
        )
        self.final_layer = FinalLayer(h, math.prod(p) * self.out_channels)
        self.initialize_weights()

    # ---- run-time settings (not saved) --------------------------------------------------------------

    def set_attention_backend(self, requested: AttentionBackend) -> None:
        """Switch every block to `requested` (resolved as in mmflow.models.attention; weights unchanged)."""
        self.backend = resolve_attention_backend(requested)
        for block in (*self.blocks, *self.text_refiner):
            block.backend = self.backend

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block in backward (training only: eval and no-grad calls run plainly)."""
        self.gradient_checkpointing = enabled

    def initialize_weights(self) -> None:
        """DiT's init; every zero-init is here: adaLN modulations and the final layer, so each block
        starts as the identity and the model outputs zero."""
        def basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

        self.apply(basic_init)
        for layer in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        if self.label_embedder is not None:
            nn.init.normal_(self.label_embedder.table.weight, std=0.02)
        added = [*self.scalar_embedders.values(), *([self.interval_embedder] if self.interval_embedder else [])]
        for emb in added:  # zero output: a model gaining them starts unchanged
            nn.init.normal_(emb.mlp[0].weight, std=0.02)
            nn.init.zeros_(emb.mlp[2].weight)
        for null in (self.null_tokens, self.null_pooled):
            if null is not None:
                nn.init.normal_(null, std=0.02)
        if self.text_pos is not None:  # zero: a model gaining positions starts as the one it continues
            nn.init.zeros_(self.text_pos)
        for block in (*self.blocks, *self.text_refiner):  # zero modulation: each block starts as the identity
            for name in ("x_modulation", "c_modulation"):
                if hasattr(block, name):
                    nn.init.zeros_(getattr(block, name).weight)
                    nn.init.zeros_(getattr(block, name).bias)
        for layer in (self.final_layer.modulation, self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # ---- conditions ---------------------------------------------------------------------------------

    def condition_keys(self) -> tuple[set[str], set[str]]:
        """(required, optional) keys of `cond` for this config."""
        cfg = self.config
        sizes = {"text": cfg.context_dim, "pooled": cfg.pooled_dim, "label": cfg.num_classes}
        required = {key for key, size in sizes.items() if size}
        required |= set(cfg.scalar_conditions)
        optional = ({"text_mask"} if cfg.context_dim else set()) | ({"concat"} if cfg.concat_channels else set())
        return required, optional | ({"frames"} if len(cfg.patch_size) == 3 else set())

    def null_condition(self, batch_like: Tensor | dict[str, Tensor]) -> dict[str, Tensor]:
        """The CFG null condition with B rows, keys as `condition_keys` (text_mask included).

        batch_like: latents x (B, ...) or a condition dict; a dict's text length S, dtype and device are
        copied (else S = null_text_length). null_text="learned": the learned tokens fill the first
        positions (masked after them) and the pooled vector is learned; "zeros": zeros, all visible.
        """
        like = batch_like if isinstance(batch_like, Tensor) else next(iter(batch_like.values()), None)
        if like is None:
            raise ValueError("null_condition needs latents or a non-empty condition dict to copy the batch from")
        b, device, cfg = like.shape[0], like.device, self.config
        dtype = self.x_embedder.weight.dtype
        text = batch_like.get("text") if isinstance(batch_like, dict) else None
        out: dict[str, Tensor] = {}
        if cfg.context_dim:
            s = text.shape[1] if text is not None else cfg.null_text_length
            dtype_t = text.dtype if text is not None else dtype
            if self.null_tokens is not None:
                n = min(s, cfg.null_text_length)
                pad = torch.zeros(s - n, cfg.context_dim, device=device, dtype=dtype_t)
                tokens = torch.cat([self.null_tokens[:n].to(device, dtype_t), pad])  # (S, context_dim)
                mask = torch.arange(s, device=device) < n  # (S,)
            else:
                tokens = torch.zeros(s, cfg.context_dim, device=device, dtype=dtype_t)
                mask = torch.ones(s, device=device, dtype=torch.bool)
            out["text"] = tokens.expand(b, -1, -1)  # (B, S, context_dim)
            out["text_mask"] = mask.expand(b, -1)  # (B, S)
        if cfg.pooled_dim:
            pooled = self.null_pooled if self.null_pooled is not None else torch.zeros(cfg.pooled_dim, device=device)
            out["pooled"] = pooled.to(device, dtype).expand(b, -1)  # (B, pooled_dim)
        if cfg.num_classes:
            out["label"] = torch.full((b,), cfg.num_classes, device=device, dtype=torch.long)
        return out

    def adapt_init_state(self, state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
        """Weights of another MM-DiT made to fit this one where the difference is known: a model with fewer
        concatenated input channels (a text-to-video model starting an image-to-video one) gets the new
        channels' patch-embedding columns at zero, so it starts as the old model; a flow model starting a MeanFlow
        one gets this model's fresh interval embedder (zero output). -> (state, what changed)."""
        changes: list[str] = []
        if self.interval_embedder is not None:
            state, changes = adopt_missing_weights(state, self.interval_embedder, "interval_embedder")
        whitening = ("text_mean", "text_whiten", "text_whiten_count")
        if self.config.text_whitening and "text_mean" not in state:
            state = {**state, **{k: getattr(self, k).detach().clone() for k in whitening}}
            changes.append("text_whitening: new, measured before the first step (the model starts as the one loaded)")
        elif not self.config.text_whitening and "text_mean" in state:
            raise ValueError("those weights read whitened text tokens (text_whitening: true there); this model would "
                             "feed them raw ones: set model.mmdit.text_whitening: true")
        if len(self.text_refiner):
            state, new = adopt_missing_weights(state, self.text_refiner, "text_refiner")
            changes += [f"text_refiner: {len(self.text_refiner)} new blocks, start as the identity (the model starts "
                        "as the one loaded)"] if new else []
        if self.text_pos is not None and "text_pos" not in state:
            state = {**state, "text_pos": self.text_pos.detach().clone()}
            changes.append(f"text_pos: {self.config.text_positions} new text positions, start at zero "
                           "(the model starts as the one loaded)")
        w, own = state.get("x_embedder.weight"), self.x_embedder.weight
        if w is None or w.shape == own.shape or w.ndim != 2 or w.shape[0] != own.shape[0]:
            return state, changes
        p = math.prod(self.config.patch_size)
        c_new = own.shape[1] // p
        c_old = w.shape[1] // p
        if w.shape[1] % p or not self.config.in_channels <= c_old < c_new:
            return state, changes
        wide = own.new_zeros(own.shape).view(own.shape[0], p, c_new)  # a patch flattens as (p..., C): C fastest
        wide[:, :, :c_old] = w.view(w.shape[0], p, c_old).to(own.dtype)
        return ({**state, "x_embedder.weight": wide.view_as(own)},
                [*changes, f"x_embedder: {c_old} -> {c_new} input channels per patch position (new ones start at zero)"])

    @property
    def text_whitening_measured(self) -> bool:
        """Whether the text whitening statistics are set (False: none, or the identity a fresh model starts with)."""
        return self.config.text_whitening and int(self.text_whiten_count) > 0

    @torch.no_grad()
    def set_text_whitening(self, whitening: Whitening, keep_function: bool = False) -> None:
        """Set the text whitening statistics; keep_function: first fold the inverse of the change into the context
        embedder, so the model computes what it did on the same text (a trained model gaining whitening)."""
        if not self.config.text_whitening:
            raise ValueError("this MM-DiT has no text whitening (MMDiTConfig.text_whitening false)")
        d = self.config.context_dim
        if tuple(whitening.mean.shape) != (d,) or tuple(whitening.matrix.shape) != (d, d):
            raise ValueError(f"whitening statistics for width {tuple(whitening.mean.shape)}, this model's text tokens "
                             f"are {d} wide")
        assert self.context_embedder is not None
        if keep_function:
            old = (self.text_mean.double(), self.text_whiten.double())
            new = (whitening.mean.double(), whitening.matrix.double())
            weight, bias = self.context_embedder.weight.double(), self.context_embedder.bias.double()
            # y = weight M_o^T (x - m_o) + bias; the new input u = M_n^T (x - m_n) gives x - m_o = M_n^-T u + m_n - m_o
            a = weight @ old[1].T @ torch.linalg.inv(new[1].T)  # (D, D_ctx)
            b = bias + weight @ old[1].T @ (new[0] - old[0])  # (D,)
            self.context_embedder.weight.copy_(a.to(self.context_embedder.weight.dtype))
            self.context_embedder.bias.copy_(b.to(self.context_embedder.bias.dtype))
        self.text_mean.copy_(whitening.mean)
        self.text_whiten.copy_(whitening.matrix)
        self.text_whiten_count.fill_(whitening.count)

    def _text_positions(self, length: int) -> Tensor:
        """The first `length` learned text positions (1, S, D); more tokens than the model has positions is an error."""
        assert self.text_pos is not None
        if length > self.text_pos.shape[0]:
            raise ValueError(f"{length} text tokens, but this model has {self.text_pos.shape[0]} text positions "
                             "(model.mmdit.text_positions): shorten the text encoders' max_length")
        return self.text_pos[None, :length]

    def _concat_input(self, extra: Tensor | None, x: Tensor) -> Tensor:
        """cond['concat'] checked against x (B, C, *S), or zeros (B, concat_channels, *S) when absent."""
        want = (x.shape[0], self.config.concat_channels, *x.shape[2:])
        if extra is None:
            return x.new_zeros(want)
        if tuple(extra.shape) != want:
            raise ValueError(f"cond['concat'] must be shaped {want} (like the latents, {want[1]} channels), "
                             f"got {tuple(extra.shape)}")
        return extra.to(x.dtype)

    def _check_condition(self, cond: dict[str, Tensor], b: int) -> None:
        required, optional = self.condition_keys()
        if not isinstance(cond, dict):
            raise TypeError(f"cond must be a dict of tensors (keys {sorted(required | optional)}) or None, "
                            f"got {type(cond).__name__}")
        missing, extra = sorted(required - set(cond)), sorted(set(cond) - required - optional)
        if missing or extra:
            parts = ([f"missing keys {missing}"] if missing else []) + ([f"unexpected keys {extra}"] if extra else [])
            raise ValueError(f"cond: {'; '.join(parts)}; this MM-DiT takes required {sorted(required)}, "
                             f"optional {sorted(optional)} (context_dim={self.config.context_dim}, "
                             f"pooled_dim={self.config.pooled_dim}, num_classes={self.config.num_classes})")
        cfg = self.config
        expect = {"text": (b, None, cfg.context_dim), "pooled": (b, cfg.pooled_dim), "label": (b,),
                  **{n: (b,) for n in cfg.scalar_conditions}}
        for key, shape in expect.items():
            if key in cond and (cond[key].ndim != len(shape)
                                or any(e is not None and e != g for e, g in zip(shape, cond[key].shape))):
                want = "(" + ", ".join("S" if e is None else str(e) for e in shape) + ")"
                raise ValueError(f"cond[{key!r}] must be shaped {want}, got {tuple(cond[key].shape)}")
        if "text_mask" in cond:
            m, s = cond["text_mask"], cond["text"].shape[1]
            if m.dtype != torch.bool or tuple(m.shape) != (b, s):
                raise ValueError(f"cond['text_mask'] must be a bool tensor shaped ({b}, {s}) (True = real token), "
                                 f"got {m.dtype} {tuple(m.shape)}")

    # ---- forward ------------------------------------------------------------------------------------

    def _run_block(self, block: MMDiTBlock, x: Tensor, ctx: Tensor | None, c: Tensor,
                   rope: tuple[Tensor, Tensor] | None, key_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """One block, recomputed in backward under gradient checkpointing (training only)."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, ctx, c, rope, key_mask, use_reentrant=False)
        return block(x, ctx, c, rope, key_mask)

    def forward(self, x: Tensor, t: Tensor, cond: dict[str, Tensor] | None = None, drop: Tensor | None = None,
                h: Tensor | None = None) -> Tensor:
        """x (B, C, *S), t (B,) or scalar, cond (see the module docstring; None = the null condition)
        -> velocity (B, C_out, *S). drop (B,) bool: those rows see the null condition instead (CFG
        dropout in training, done here as DiT's label embedder does, so no caller needs the bare model).
        h (B,) or scalar: MeanFlow's jump length (interval_embed models only; None = 0, the velocity)."""
        cfg = self.config
        check_latent(x, tuple(cfg.patch_size), cfg.in_channels)
        b = x.shape[0]
        t = t.expand(b) if t.ndim == 0 else t
        if t.shape != (b,):
            raise ValueError(f"t must be a scalar or shaped ({b},), got {tuple(t.shape)}")
        jump = interval_input(h, t, self.interval_embedder is not None)  # (B,) or None; `h` is the tokens below
        if cond is None:
            cond = self.null_condition(x)
        elif drop is not None:  # a conditioning image, frame counts, timing are kept: CFG's null is about the text
            keep = (*KEPT_THROUGH_DROPOUT, *cfg.scalar_conditions)
            kept = {k: v for k, v in cond.items() if k in keep}
            rest = {k: v for k, v in cond.items() if k not in keep}
            cond = {**apply_condition_dropout(rest, self.null_condition(rest or x), drop), **kept}
        self._check_condition(cond, b)
        if cfg.concat_channels:
            x = torch.cat([x, self._concat_input(cond.get("concat"), x)], dim=1)  # (B, C + C_cat, *S)

        tokens, grid = patchify(x, tuple(cfg.patch_size))  # (B, N, prod(p) * C), grid (g_1..g_k)
        h = self.x_embedder(tokens)  # (B, N, D)
        rope = None
        if cfg.pos_embed == "sincos":
            h = h + crop_sincos_table(self.pos_table, cfg.pos_embed_max_size, grid).to(h.dtype)  # (B, N, D)
        else:
            rope = rope_angles(grid, cfg.head_dim, cfg.rope_theta, device=x.device)  # (N, Dh/2) each
            if cfg.abs_positions:
                cos, sin = rope_angles(grid, cfg.hidden_size, cfg.rope_theta, device=x.device)  # (N, D/2) each
                h = h + torch.cat([sin, cos], dim=-1).to(h.dtype)  # (N, D) broadcast over the batch

        c = self.t_embedder(t)  # (B, D)
        if self.pooled_embedder is not None:
            c = c + self.pooled_embedder(cond["pooled"])
        if self.label_embedder is not None:
            c = c + self.label_embedder(cond["label"])
        for name, emb in self.scalar_embedders.items():
            c = c + emb(cond[name])
        if self.interval_embedder is not None:
            c = c + self.interval_embedder(jump)

        ctx, key_mask = None, None
        latent_keys = None if cond.get("frames") is None else frame_token_mask(cond["frames"], grid, cfg.patch_size[0])
        if self.context_embedder is not None:
            text, mask = cond["text"], cond.get("text_mask")
            if cfg.text_whitening:
                text = (text - self.text_mean.to(text.dtype)) @ self.text_whiten.to(text.dtype)  # (B, S, context_dim)
            if mask is not None:  # padded tokens: zero input (NaN-safe) and invisible as keys
                text = torch.where(mask[..., None], text, torch.zeros_like(text))  # (B, S, context_dim)
            if mask is not None or latent_keys is not None:
                mask = mask if mask is not None else torch.ones(b, text.shape[1], dtype=torch.bool, device=x.device)
                latent_keys = latent_keys if latent_keys is not None else mask.new_ones(b, h.shape[1])
                key_mask = torch.cat([latent_keys, mask], dim=1)  # (B, N + S)
            ctx = self.context_embedder(text)  # (B, S, D)
            if self.text_pos is not None:
                ctx = ctx + self._text_positions(ctx.shape[1]).to(ctx.dtype)  # (1, S, D) broadcast
            for block in self.text_refiner:
                ctx = self._run_block(block, ctx, None, c, None, mask)[0]  # (B, S, D); mask (B, S) or None
        elif latent_keys is not None:
            key_mask = latent_keys  # (B, N)

        for block in self.blocks:
            h, ctx = self._run_block(block, h, ctx, c, rope, key_mask)
        out = self.final_layer(h, c)  # (B, N, prod(p) * C_out)
        return unpatchify(out, grid, tuple(cfg.patch_size), self.out_channels)  # (B, C_out, *S)

