"""Tests for mmflow/models/attention.py: backends agree, masks hide keys, xformers falls back cleanly."""

from __future__ import annotations

import importlib.util
import logging
import sys
import types

import pytest
import torch

from mmflow.models.attention import _xformers_attention, attention, resolve_attention_backend


def _qkv(b: int = 2, h: int = 3, nq: int = 7, nk: int = 9, d: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, nq, d, generator=g), torch.randn(b, h, nk, d, generator=g),
            torch.randn(b, h, nk, d, generator=g))


def _key_mask() -> torch.Tensor:
    return torch.tensor([[True] * 9, [True] * 5 + [False] * 4])  # (B, Nk)


@pytest.mark.parametrize("masked", [False, True])
def test_math_equals_sdpa(masked: bool) -> None:
    q, k, v = _qkv()
    mask = _key_mask() if masked else None
    ref = attention(q, k, v, mask, backend="math")
    assert torch.allclose(attention(q, k, v, mask, backend="sdpa"), ref, atol=1e-5)
    # the math backend is the textbook formula
    scores = (q @ k.transpose(-2, -1)) / 8**0.5
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None], float("-inf"))
    assert torch.allclose(ref, scores.softmax(-1) @ v, atol=1e-6)


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_masked_keys_are_invisible(backend: str) -> None:
    q, k, v = _qkv()
    mask = _key_mask()
    out = attention(q, k, v, mask, backend)
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 5:] += 100.0
    v2[1, :, 5:] = -7.0
    assert torch.allclose(attention(q, k2, v2, mask, backend), out, atol=1e-6)
    # unmasked keys do matter
    k2[1, :, 0] += 1.0
    assert not torch.allclose(attention(q, k2, v2, mask, backend), out, atol=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("xformers") is not None, reason="xformers is installed here")
def test_xformers_without_xformers_falls_back_to_sdpa_with_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mmflow.models"):
        assert resolve_attention_backend("xformers") == "sdpa"
    lines = [r.getMessage() for r in caplog.records if r.name == "mmflow.models"]
    assert len(lines) == 1 and "xformers requested but not installed" in lines[0] and "using torch sdpa" in lines[0]


def test_resolve_other_backends(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mmflow.models"):
        assert resolve_attention_backend("auto") == "sdpa"
        assert resolve_attention_backend("sdpa") == "sdpa"
        assert resolve_attention_backend("math") == "math"
    assert sum("attention backend" in r.getMessage() for r in caplog.records) == 3
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        resolve_attention_backend("flash")


def test_xformers_backend_on_cpu_tensors_uses_sdpa() -> None:
    q, k, v = _qkv()
    assert torch.allclose(attention(q, k, v, _key_mask(), backend="xformers"),
                          attention(q, k, v, _key_mask(), backend="sdpa"), atol=1e-6)


def _fake_xformers(monkeypatch: pytest.MonkeyPatch, seen: list) -> None:
    """A stand-in `xformers.ops` (reference math, BMHK layout) that records the bias it is given."""
    def memory_efficient_attention(q, k, v, attn_bias=None):
        seen.append(attn_bias)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5
        if attn_bias is not None:
            scores = scores + attn_bias
        return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)

    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = memory_efficient_attention
    package = types.ModuleType("xformers")
    package.ops = ops
    monkeypatch.setitem(sys.modules, "xformers", package)
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)


def test_xformers_wrapper_layout_and_aligned_broadcast_bias(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list = []
    _fake_xformers(monkeypatch, seen)
    q, k, v = _qkv()
    out = _xformers_attention(q, k, v, _key_mask())
    assert torch.allclose(out, attention(q, k, v, _key_mask(), "math"), atol=1e-5)
    bias = seen[-1]
    assert bias.shape == (2, 3, 7, 9) and bias.stride()[1:3] == (0, 0)  # broadcast, not materialised
    assert bias.stride(0) % 8 == 0 and bias.stride(-1) == 1  # rows start 8-aligned
    assert torch.allclose(_xformers_attention(q, k, v, None), attention(q, k, v, None, "math"), atol=1e-5)


def test_xformers_importable_but_no_cuda_falls_back(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    _fake_xformers(monkeypatch, [])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.INFO, logger="mmflow.models"):
        assert resolve_attention_backend("xformers") == "sdpa"
    assert "CUDA is not available (xformers has no CPU kernels); using torch sdpa" in caplog.text


# ---- CUDA-only (run on a GPU machine) ------------------------------------------------------------------


def _cuda_qkv(dtype: torch.dtype):
    q, k, v = _qkv(b=2, h=4, nq=256, nk=300, d=64)
    return q.cuda().to(dtype), k.cuda().to(dtype), v.cuda().to(dtype)


@pytest.mark.cuda
def test_cuda_bf16_flash_sdpa_matches_math() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = _cuda_qkv(torch.bfloat16)
    ref = attention(q.float(), k.float(), v.float(), None, "math")
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises if flash cannot run these inputs
        out = attention(q, k, v, None, "sdpa")
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 2e-2
    mask = torch.arange(300, device="cuda")[None] < torch.tensor([[300], [200]], device="cuda")  # (B, Nk)
    masked = attention(q, k, v, mask, "sdpa")  # a mask rules flash out: the efficient kernel runs
    ref = attention(q.float(), k.float(), v.float(), mask, "math")
    assert (masked.float() - ref).abs().max() < 2e-2


@pytest.mark.cuda
def test_cuda_xformers_matches_math() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    if importlib.util.find_spec("xformers") is None:
        pytest.skip("needs xformers")
    assert resolve_attention_backend("xformers") == "xformers"
    q, k, v = _cuda_qkv(torch.float16)
    mask = torch.rand(2, 300, device="cuda") > 0.3
    mask[:, 0] = True
    ref = attention(q.float(), k.float(), v.float(), mask, "math")
    out = attention(q, k, v, mask, "xformers")
    assert (out.float() - ref).abs().max() < 1e-2
