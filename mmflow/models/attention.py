"""Multi-head attention kernels behind one function, with the backend chosen once when a model is built.

Backends:
- "sdpa":     torch.nn.functional.scaled_dot_product_attention; on CUDA it dispatches to the flash or
              memory-efficient kernels by itself. "auto" means this.
- "xformers": xformers.ops.memory_efficient_attention, used only when xformers imports AND runs a
              probe on the CUDA device (it has no CPU kernels); otherwise sdpa, with a log line that says
              why. Tensors that end up on a non-CUDA device still go through sdpa.
- "math":     explicit softmax(q k^T / sqrt(d)) v in (at least) float32, the reference the others are tested against.

All take q (B, H, Nq, D), k and v (B, H, Nk, D) and an optional key mask (B, Nk) bool (True = attend)
and return (B, H, Nq, D). A query row must keep at least one key (the MM-DiT always keeps its latents).

Forward-mode AD (the Jacobian-vector product of MeanFlow's loss, mmflow/flow/meanflow.py) has no formula
for torch's fused SDPA kernels (flash, memory-efficient, the CPU flash kernel) nor for xformers: inside
`plain_kernels()` every backend runs "math", and the MM-DiT's fused GELU-linear its plain ops. The math
path materialises the (B, H, Nq, Nk) scores, so it costs O(N^2) memory per head where flash costs O(N).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ATTENTION_BACKENDS", "resolve_attention_backend", "attention", "plain_kernels", "plain_kernels_active"]

logger = logging.getLogger("mmflow.models")

ATTENTION_BACKENDS = ("auto", "sdpa", "xformers", "math")

_PLAIN = contextvars.ContextVar("mmflow_plain_kernels", default=False)


@contextlib.contextmanager
def plain_kernels() -> Iterator[None]:
    """Within: attention runs the "math" backend whatever a model chose, and fused custom autograd functions
    (the MM-DiT's GELU-linear) their plain ops: what forward-mode AD (torch.func.jvp) can differentiate."""
    token = _PLAIN.set(True)
    try:
        yield
    finally:
        _PLAIN.reset(token)


def plain_kernels_active() -> bool:
    """Whether the caller is inside `plain_kernels()` (never in compiled code: dynamo cannot read a ContextVar,
    and torch.func.jvp runs eagerly)."""
    return not torch.compiler.is_compiling() and _PLAIN.get()


def _xformers_status() -> tuple[bool, str]:
    """(usable, reason): xformers imports and runs a tiny attention on the current CUDA device."""
    try:
        import xformers.ops as xops
    except ModuleNotFoundError as exc:
        if exc.name == "xformers":
            return False, "xformers requested but not installed; using torch sdpa"
        return False, f"xformers requested but failed to import ({exc}); using torch sdpa"
    except Exception as exc:  # a broken build can raise anything at import
        return False, f"xformers requested but failed to import ({type(exc).__name__}: {exc}); using torch sdpa"
    if not torch.cuda.is_available():
        return False, "xformers requested but CUDA is not available (xformers has no CPU kernels); using torch sdpa"
    try:
        q = torch.zeros(1, 8, 1, 8, device="cuda", dtype=torch.float16)  # (B, N, H, D)
        xops.memory_efficient_attention(q, q, q)
    except Exception as exc:  # built for another torch/CUDA/GPU
        return False, f"xformers requested but failed on {torch.cuda.get_device_name()} ({exc}); using torch sdpa"
    return True, f"attention backend: xformers memory_efficient_attention on {torch.cuda.get_device_name()}"


def resolve_attention_backend(requested: str) -> str:
    """Map a requested backend to the one that runs ("sdpa" | "xformers" | "math"), logging one line why."""
    if requested not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {requested!r}; choose one of {ATTENTION_BACKENDS}")
    if requested == "xformers":
        usable, reason = _xformers_status()
        (logger.info if usable else logger.warning)(reason)
        return "xformers" if usable else "sdpa"
    if requested == "math":
        logger.info("attention backend: math (explicit softmax(QK^T)V in float32; reference, slow)")
        return "math"
    logger.info("attention backend: torch sdpa (%s requested; flash/memory-efficient kernels on CUDA)", requested)
    return "sdpa"


def _math_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> Tensor:
    dtype = torch.promote_types(q.dtype, torch.float32)  # at least float32; float64 stays exact (JVP tests)
    scores = q.to(dtype) @ k.to(dtype).transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, Nq, Nk)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return (scores.softmax(dim=-1) @ v.to(dtype)).to(q.dtype)  # (B, H, Nq, D)


def _xformers_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> Tensor:
    import xformers.ops as xops

    bias = None
    if key_mask is not None:
        b, h, nq, nk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
        # an additive bias whose rows are stored 8-aligned (xformers' requirement), broadcast by expand
        # (stride 0) over heads and queries rather than materialised as (B, H, Nq, Nk)
        padded = torch.zeros(b, 1, 1, (nk + 7) // 8 * 8, device=q.device, dtype=q.dtype)
        bias = padded[..., :nk]  # (B, 1, 1, Nk), a view: keeps the aligned row stride
        bias.masked_fill_(~key_mask[:, None, None, :], float("-inf"))
        bias = bias.expand(b, h, nq, nk)
    out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias)
    return out.transpose(1, 2)  # (B, H, Nq, D)


def attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None, backend: str = "sdpa") -> Tensor:
    """softmax(q k^T / sqrt(D)) v over keys where key_mask (B, Nk) is True; q (B, H, Nq, D), k, v (B, H, Nk, D)."""
    if backend == "math" or plain_kernels_active():
        return _math_attention(q, k, v, key_mask)
    if backend == "xformers" and q.device.type == "cuda":
        return _xformers_attention(q, k, v, key_mask)
    mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, Nk), broadcast over heads, queries
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
