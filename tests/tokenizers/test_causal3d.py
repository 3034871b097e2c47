"""Tests for mmflow/tokenizers/causal3d.py: causal padding, exact streaming, per-frame norm, resampling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmflow.tokenizers.causal3d import (
    CausalConv3d,
    Downsample3d,
    FrameGroupNorm,
    ResBlock3d,
    Upsample3d,
    streaming,
)


def _video(t: int, c: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, c, t, 6, 6, generator=torch.Generator().manual_seed(seed))


def _conv(stride: int = 1, pad_mode: str = "replicate", seed: int = 0) -> CausalConv3d:
    torch.manual_seed(seed)
    return CausalConv3d(2, 3, 3, stride=(stride, 1, 1), pad_mode=pad_mode)  # type: ignore[arg-type]


def test_replicate_padding_matches_explicit_past_frames() -> None:
    conv, x = _conv(), _video(5)
    padded = torch.cat([x[:, :, :1], x[:, :, :1], x], dim=2)  # two copies of frame 0 before it
    expected = F.conv3d(padded, conv.conv.weight, conv.conv.bias, padding=(0, 1, 1))
    torch.testing.assert_close(conv(x), expected)


def test_zero_padding_matches_explicit_black_past() -> None:
    conv, x = _conv(pad_mode="zeros"), _video(5)
    padded = F.pad(x, (0, 0, 0, 0, 2, 0))
    torch.testing.assert_close(conv(x), F.conv3d(padded, conv.conv.weight, conv.conv.bias, padding=(0, 1, 1)))


def test_replicate_keeps_a_static_clip_static_and_zeros_does_not() -> None:
    still = _video(1).expand(-1, -1, 4, -1, -1)  # the same frame four times
    out = _conv()(still)
    torch.testing.assert_close(out, out[:, :, :1].expand_as(out))
    out0 = _conv(pad_mode="zeros")(still)
    assert (out0[:, :, 0] - out0[:, :, 3]).abs().max() > 1e-3  # the black past shows in frame 0


@pytest.mark.parametrize("stride", [1, 2])
def test_output_frame_sees_only_past_frames(stride: int) -> None:
    conv, x = _conv(stride), _video(7)
    base = conv(x)
    assert base.shape[2] == (7 - 1) // stride + 1
    for k in range(7):
        y = x.clone()
        y[:, :, k] += 1.0
        changed = (conv(y) - base).flatten(3).abs().amax(dim=(0, 1, 3)) > 0  # (T_out,)
        # output j reads frames j*s - 2 .. j*s: it changes iff k lies in that window
        expected = torch.tensor([j * stride - 2 <= k <= j * stride for j in range(base.shape[2])])
        assert torch.equal(changed, expected), (k, changed, expected)


@pytest.mark.parametrize("stride,first,rest", [(1, 3, 2), (1, 1, 1), (2, 5, 4), (2, 1, 2)])
def test_streaming_chunks_equal_whole_clip(stride: int, first: int, rest: int) -> None:
    conv, x = _conv(stride), _video(9)
    whole = conv(x)
    bounds = [(0, first)] + [(s, s + rest) for s in range(first, 9, rest)]
    with streaming(conv):
        parts = [conv(x[:, :, s:e]) for s, e in bounds]
    torch.testing.assert_close(torch.cat(parts, dim=2), whole, rtol=0, atol=1e-6)
    assert conv.cache is None and not conv.streaming  # state dropped when the block ends
    torch.testing.assert_close(conv(x), whole)  # and the next call is a fresh clip


def test_streaming_chunk_too_short_for_a_strided_conv_is_an_error() -> None:
    conv, x = _conv(stride=2), _video(3)
    with streaming(conv), pytest.raises(ValueError, match="yields no output frame"):
        conv(x[:, :, :1])  # padded to 3 frames: output 0, cache 1 frame
        conv(x[:, :, 1:2])  # cache 1 + 1 frame < kernel 3


def test_frame_group_norm_is_group_norm_per_frame() -> None:
    norm, x = FrameGroupNorm(2, 4), torch.randn(2, 4, 3, 5, 5)
    for t in range(3):
        torch.testing.assert_close(norm(x)[:, :, t], F.group_norm(x[:, :, t], 2, norm.weight, norm.bias))
    y = x.clone()
    y[:, :, 2] *= 10  # a louder future frame leaves the earlier frames' normalisation alone
    torch.testing.assert_close(norm(y)[:, :, :2], norm(x)[:, :, :2])


def test_down_and_upsample_frame_counts_are_inverse() -> None:
    torch.manual_seed(0)
    down, up = Downsample3d(2, True, "replicate"), Upsample3d(2, True, "replicate")
    for t in (1, 3, 5, 9):
        h = down(torch.randn(1, 2, t, 8, 8))
        assert h.shape == (1, 2, 1 + (t - 1) // 2, 4, 4)
        assert up(h).shape == (1, 2, t, 8, 8)
    space_only = Downsample3d(2, False, "replicate")
    assert space_only(torch.randn(1, 2, 5, 8, 8)).shape == (1, 2, 5, 4, 4)


def _random_time_conv(up: Upsample3d) -> Upsample3d:
    """The depth-to-time conv starts at zero; give it weights so a test sees its path."""
    assert up.time_conv is not None
    with torch.no_grad():
        up.time_conv.conv.weight.normal_(0, 0.3)
        up.time_conv.conv.bias.normal_(0, 0.3)
    return up


def test_upsample_starts_as_repetition_and_learns_distinct_pairs() -> None:
    torch.manual_seed(0)
    up, z = Upsample3d(2, True, "replicate"), torch.randn(1, 2, 3, 3, 3)
    repeated = torch.cat([z[:, :, :1], z[:, :, 1:].repeat_interleave(2, dim=2)], dim=2)  # (1, 2, 5, 3, 3)
    expected = up.conv(torch.nn.functional.interpolate(repeated, scale_factor=(1.0, 2.0, 2.0), mode="nearest"))
    torch.testing.assert_close(up(z), expected)  # zero-initialised: plain repetition
    _random_time_conv(up)
    assert up(z).shape == expected.shape == (1, 2, 5, 6, 6)
    assert (up(z) - expected).abs().max() > 1e-2  # the learned pairs change the output
    # frames 1 and 2 both come from latent frame 1; the conv gives each its own features
    pairs = up.time_conv(z).view(1, 2, 2, 3, 3, 3)  # (B, pair, C, T, H, W)
    assert (pairs[:, 0, :, 1] - pairs[:, 1, :, 1]).abs().max() > 1e-2


def test_upsample_output_is_causal() -> None:
    torch.manual_seed(0)
    up, z = _random_time_conv(Upsample3d(2, True, "replicate")), torch.randn(1, 2, 4, 3, 3)
    base = up(z)
    for j in range(4):
        w = z.clone()
        w[:, :, j] += 1.0
        diff = (up(w) - base).abs().amax(dim=(0, 1, 3, 4))  # (2T-1,)
        first = 0 if j == 0 else 2 * j - 1
        assert torch.all(diff[:first] == 0) and torch.all(diff[first:first + 2] > 1e-6), (j, diff)


def test_upsample_streaming_equals_whole() -> None:
    torch.manual_seed(0)
    up, z = _random_time_conv(Upsample3d(2, True, "replicate")), torch.randn(1, 2, 6, 3, 3)
    whole = up(z)
    with streaming(up):
        parts = [up(z[:, :, :2]), up(z[:, :, 2:3]), up(z[:, :, 3:])]
    torch.testing.assert_close(torch.cat(parts, 2), whole, rtol=0, atol=1e-6)


def test_resblock_streaming_equals_whole() -> None:
    torch.manual_seed(0)
    block, x = ResBlock3d(4, 8, 2, "replicate"), torch.randn(1, 4, 7, 4, 4)
    whole = block(x)
    with streaming(block):
        parts = [block(x[:, :, :3]), block(x[:, :, 3:5]), block(x[:, :, 5:])]
    torch.testing.assert_close(torch.cat(parts, 2), whole, rtol=0, atol=1e-6)


def test_per_frame_resblock_and_time_halving_keep_a_temporal_window() -> None:
    torch.manual_seed(0)
    block, x = ResBlock3d(4, 4, 2, "replicate", kernel_t=1), torch.randn(1, 4, 5, 4, 4)
    y = x.clone()
    y[:, :, 2] += 1.0
    diff = (block(y) - block(x)).abs().amax(dim=(0, 1, 3, 4))  # (T,)
    assert diff[2] > 1e-6 and torch.all(diff[[0, 1, 3, 4]] == 0)  # kernel_t=1: each frame on its own
    assert Downsample3d(4, True, "replicate", kernel_t=1).conv.kernel_t == 3
    assert Downsample3d(4, False, "replicate", kernel_t=1).conv.kernel_t == 1
    assert Upsample3d(4, True, "replicate", kernel_t=1).conv.kernel_t == 1


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="spatial kernel must be odd"):
        CausalConv3d(1, 1, (3, 4, 4))
    with pytest.raises(ValueError, match="pad_mode"):
        CausalConv3d(1, 1, 3, pad_mode="reflect")  # type: ignore[arg-type]
