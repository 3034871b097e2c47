"""Tests for mmflow/tokenizers/conv_blocks.py: each block against a from-scratch reference computation
(parity of the whole stack with diffusers lives in tests/interop/test_diffusers_vae.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmflow.tokenizers.conv_blocks import (
    Downsample2d,
    DownBlock2d,
    MidBlock2d,
    ResnetBlock2d,
    SpatialAttention,
    Upsample2d,
    UpBlock2d,
    group_norm,
)


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))


def test_resnet_block_matches_reference_and_skip() -> None:
    torch.manual_seed(0)
    block = ResnetBlock2d(8, 16, groups=4).eval()
    _randomize(block)
    x = torch.randn(2, 8, 5, 7)
    h = F.conv2d(F.silu(F.group_norm(x, 4, block.norm1.weight, block.norm1.bias, 1e-6)),
                 block.conv1.weight, block.conv1.bias, padding=1)
    h = F.conv2d(F.silu(F.group_norm(h, 4, block.norm2.weight, block.norm2.bias, 1e-6)),
                 block.conv2.weight, block.conv2.bias, padding=1)
    ref = F.conv2d(x, block.skip.weight, block.skip.bias) + h
    assert torch.allclose(block(x), ref, atol=1e-5)
    same = ResnetBlock2d(8, 8, groups=4)
    assert isinstance(same.skip, torch.nn.Identity)
    with torch.no_grad():
        same.conv2.weight.zero_()
        same.conv2.bias.zero_()
    assert torch.equal(same(x), x)  # a zeroed last conv leaves only the identity path


def test_downsample_pads_bottom_right_only() -> None:
    down = Downsample2d(3)
    x = torch.randn(1, 3, 8, 6, requires_grad=True)
    y = down(x)
    assert y.shape == (1, 3, 4, 3)
    # output (0, 0) sees input rows/cols 0..2: no padding on the top/left
    y[0, 0, 0, 0].backward()
    support = x.grad[0].abs().sum(0) > 0
    expected = torch.zeros(8, 6, dtype=torch.bool)
    expected[:3, :3] = True
    assert torch.equal(support, expected)
    ref = F.conv2d(F.pad(x.detach(), (0, 1, 0, 1)), down.conv.weight, down.conv.bias, stride=2)
    assert torch.allclose(y.detach(), ref)


def test_upsample_is_nearest_then_conv() -> None:
    up = Upsample2d(2)
    with torch.no_grad():  # identity kernel: output = nearest-neighbour upsampling exactly
        up.conv.weight.zero_()
        up.conv.bias.zero_()
        for c in range(2):
            up.conv.weight[c, c, 1, 1] = 1.0
    x = torch.randn(2, 2, 3, 4)
    assert torch.equal(up(x), x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))


@pytest.mark.parametrize("heads", [1, 2])
def test_spatial_attention_matches_softmax_reference(heads: int) -> None:
    torch.manual_seed(0)
    attn = SpatialAttention(8, groups=2, num_heads=heads).eval()
    _randomize(attn)
    x = torch.randn(2, 8, 3, 5)
    h = F.group_norm(x, 2, attn.norm.weight, attn.norm.bias, 1e-6).flatten(2).transpose(1, 2)  # (B, N, C)
    q, k, v = (h @ attn.qkv.weight.T + attn.qkv.bias).chunk(3, dim=-1)
    d = 8 // heads
    split = lambda t: t.unflatten(-1, (heads, d)).transpose(1, 2)  # noqa: E731  (B, H, N, D)
    w = (split(q) @ split(k).transpose(-1, -2) / math.sqrt(d)).softmax(-1)
    out = (w @ split(v)).transpose(1, 2).flatten(2) @ attn.proj.weight.T + attn.proj.bias
    ref = x + out.transpose(1, 2).reshape(x.shape)
    assert torch.allclose(attn(x), ref, atol=1e-5)


@pytest.mark.parametrize("spatial", [(12,), (3, 4), (2, 3, 2)])
def test_spatial_attention_is_permutation_equivariant_in_any_rank(spatial: tuple[int, ...]) -> None:
    torch.manual_seed(1)
    attn = SpatialAttention(4, groups=2).eval()
    _randomize(attn)
    x = torch.randn(2, 4, *spatial)
    perm = torch.randperm(math.prod(spatial))
    permuted = x.flatten(2)[..., perm].reshape(x.shape)
    out = attn(x).flatten(2)[..., perm]
    assert torch.allclose(attn(permuted).flatten(2), out, atol=1e-5)  # GroupNorm and attention ignore order


def test_stage_blocks_shapes_and_group_errors() -> None:
    x = torch.randn(1, 8, 8, 8)
    assert DownBlock2d(8, 16, num_layers=2, groups=4, downsample=True)(x).shape == (1, 16, 4, 4)
    assert DownBlock2d(8, 16, num_layers=1, groups=4, downsample=False)(x).shape == (1, 16, 8, 8)
    assert UpBlock2d(8, 4, num_layers=3, groups=4, upsample=True)(x).shape == (1, 4, 16, 16)
    mid = MidBlock2d(8, groups=4, use_attention=False)
    assert mid.attn is None and mid(x).shape == x.shape
    with pytest.raises(ValueError, match="norm_num_groups 3 does not divide the block width 8"):
        group_norm(8, 3)
    with pytest.raises(ValueError, match="attention heads 3 do not divide the width 8"):
        SpatialAttention(8, groups=4, num_heads=3)
