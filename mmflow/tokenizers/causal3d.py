"""Causal 3-D convolutions and the blocks the video VAE is built from.

Causal means output frame t depends on input frames <= t only: every temporal padding goes on the
past side. Two consequences the video VAE relies on:

* the first frame is encoded on its own, so an image is simply a 1-frame video (CogVideoX, MovieGen);
* a long clip can be processed in temporal chunks *exactly*: each conv keeps the input frames the next
  chunk still needs (its last kernel - stride frames, CogVideoX's `conv_cache`) and prepends them to
  that chunk instead of padding. Inside `streaming(module)` every causal module carries such a cache
  from one call to the next; outside it every call is a whole, independent clip.

Shapes: video tensors are (B, C, T, H, W) throughout.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TemporalPad = Literal["replicate", "zeros"]


def _triple(v: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


class StreamingModule(nn.Module):
    """A module that can carry state between consecutive temporal chunks (see `streaming`)."""

    def __init__(self) -> None:
        super().__init__()
        self.streaming = False

    def start_stream(self) -> None:
        self.streaming = True
        self.reset_stream()

    def end_stream(self) -> None:
        self.streaming = False
        self.reset_stream()

    def reset_stream(self) -> None:
        """Forget the carried state (the next call starts a new clip)."""


@contextmanager
def streaming(module: nn.Module) -> Iterator[None]:
    """Within the block, consecutive calls of `module` are consecutive temporal chunks of one clip."""
    mods = [m for m in module.modules() if isinstance(m, StreamingModule)]
    for m in mods:
        m.start_stream()
    try:
        yield
    finally:
        for m in mods:  # drop the caches: they hold activations (and maybe a graph)
            m.end_stream()


class CausalConv3d(StreamingModule):
    """Conv3d padded on the past side in time ("same" zero padding in space).

    With temporal stride s and kernel k, output frame j sees padded input frames j*s .. j*s + k - 1,
    i.e. original frames <= j*s. The past padding repeats the first frame ("replicate": a still image
    then looks like a static scene, and a constant clip gives constant features with no onset at
    frame 0) or is zero ("zeros": the past is black). Replicate is the default, as in CogVideoX.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int, int] = 3,
                 stride: int | tuple[int, int, int] = 1, pad_mode: TemporalPad = "replicate") -> None:
        super().__init__()
        kt, kh, kw = _triple(kernel_size)
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"CausalConv3d: spatial kernel must be odd for 'same' padding, got {(kh, kw)}")
        if pad_mode not in ("replicate", "zeros"):
            raise ValueError(f"CausalConv3d: pad_mode must be 'replicate' or 'zeros', got {pad_mode!r}")
        self.kernel_t, self.stride_t = kt, _triple(stride)[0]
        self.time_pad = kt - 1
        self.pad_mode = pad_mode
        self.conv = nn.Conv3d(in_channels, out_channels, (kt, kh, kw), stride=stride, padding=(0, kh // 2, kw // 2))
        self.cache: Tensor | None = None

    def reset_stream(self) -> None:
        self.cache = None

    def _pad_past(self, x: Tensor) -> Tensor:
        if self.time_pad == 0:
            return x
        if self.pad_mode == "replicate":
            past = x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1)
        else:
            past = x.new_zeros(x.shape[0], x.shape[1], self.time_pad, *x.shape[3:])
        return torch.cat([past, x], dim=2)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, T, H, W) -> (B, C_out, T_out, H', W'); T_out = floor((T - 1) / s) + 1 for a whole clip."""
        if self.streaming and self.cache is not None:
            x = torch.cat([self.cache, x], dim=2)  # the previous chunk's unconsumed frames replace the padding
        else:
            x = self._pad_past(x)
        if self.streaming:
            n_out = (x.shape[2] - self.kernel_t) // self.stride_t + 1 if x.shape[2] >= self.kernel_t else 0
            if n_out == 0:
                raise ValueError(f"CausalConv3d: a chunk of {x.shape[2]} padded frames yields no output frame "
                                 f"(kernel {self.kernel_t}, stride {self.stride_t}); use longer chunks")
            self.cache = x[:, :, n_out * self.stride_t:]  # frames the next output frame starts from
        return self.conv(x)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm with statistics per frame: (B, C, T, H, W) is normalised as (B*T, C, H, W).

    A plain GroupNorm on 5-D input pools statistics over all frames, so frame 0's features would depend
    on future frames (breaking causality) and on where a chunk starts (breaking exact chunking).
    """

    def forward(self, x: Tensor) -> Tensor:
        b, c, t, h, w = x.shape
        y = super().forward(x.transpose(1, 2).reshape(b * t, c, h, w))  # (B*T, C, H, W)
        return y.reshape(b, t, c, h, w).transpose(1, 2)


class ResBlock3d(nn.Module):
    """norm -> SiLU -> causal conv, twice, plus a (1x1x1-projected) skip connection.

    `kernel_t` is the convs' temporal extent: 3 mixes each frame with its two predecessors, 1 makes the
    block per-frame (2-D convs in effect): a third of the cost at full resolution, and as good there in
    our runs; the time-compressing levels below them do the temporal mixing.
    """

    def __init__(self, in_channels: int, out_channels: int, norm_groups: int, pad_mode: TemporalPad,
                 kernel_t: int = 3) -> None:
        super().__init__()
        self.norm1 = FrameGroupNorm(norm_groups, in_channels, eps=1e-6)
        self.conv1 = CausalConv3d(in_channels, out_channels, (kernel_t, 3, 3), pad_mode=pad_mode)
        self.norm2 = FrameGroupNorm(norm_groups, out_channels, eps=1e-6)
        self.conv2 = CausalConv3d(out_channels, out_channels, (kernel_t, 3, 3), pad_mode=pad_mode)
        self.skip = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, T, H, W)
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Downsample3d(nn.Module):
    """Halve H and W, and T when `time` (T = 1 + 2m -> 1 + m: frame 0 alone, then pairs)."""

    def __init__(self, channels: int, time: bool, pad_mode: TemporalPad, kernel_t: int = 3) -> None:
        super().__init__()
        self.time = time
        kt = 3 if time else kernel_t  # halving time needs a temporal window
        self.conv = CausalConv3d(channels, channels, (kt, 3, 3), stride=(2 if time else 1, 2, 2), pad_mode=pad_mode)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)  # (B, C, T', H/2, W/2)


class Upsample3d(StreamingModule):
    """Double H and W (nearest), and T when `time`, then a causal conv smooths the result.

    Time is doubled by depth-to-time: a causal conv gives every frame 2C channels, read as two output
    frames (1 + m -> 1 + 2m: frame 0 keeps one of its pair, the inverse of Downsample3d), added to the
    frames repeated. Repetition alone gives both frames of a pair the same features, and a causal conv
    after it can only tell them apart by how much of the previous pair its window holds, so the decoder
    could barely unpack the distinct frames one latent frame encodes. The conv starts at zero, so
    training starts from plain repetition.
    """

    def __init__(self, channels: int, time: bool, pad_mode: TemporalPad, kernel_t: int = 3) -> None:
        super().__init__()
        self.time = time
        self.time_conv = CausalConv3d(channels, 2 * channels, 3, pad_mode=pad_mode) if time else None
        if self.time_conv is not None:
            nn.init.zeros_(self.time_conv.conv.weight)
            nn.init.zeros_(self.time_conv.conv.bias)
        self.conv = CausalConv3d(channels, channels, (kernel_t, 3, 3), pad_mode=pad_mode)
        self.started = False  # streaming: has the chunk holding the clip's first frame gone through?

    def reset_stream(self) -> None:
        self.started = False

    def forward(self, x: Tensor) -> Tensor:
        if self.time_conv is not None:
            b, c, t, h, w = x.shape
            pairs = self.time_conv(x).view(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5)  # (B, C, T, 2, H, W)
            x = x.repeat_interleave(2, dim=2) + pairs.reshape(b, c, 2 * t, h, w)  # (B, C, 2T, H, W)
            if not (self.streaming and self.started):
                x = x[:, :, 1:]  # the clip's first frame stays single: (B, C, 2T-1, H, W)
            self.started = self.streaming
        x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")  # (B, C, T', 2H, 2W)
        return self.conv(x)
