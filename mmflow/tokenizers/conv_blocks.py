"""Convolutional building blocks of the image VAE (the Stable Diffusion / LDM autoencoder family).

Each block is written to compute exactly what its diffusers counterpart computes (ResnetBlock2D,
Downsample2D with padding 0, Upsample2D, the single-head `Attention` of UNetMidBlock2D), so that
converted weights reproduce diffusers' outputs; the module names are our own and only
mmflow.interop knows the mapping. Every GroupNorm uses eps = 1e-6 and every activation is SiLU, as
in all those autoencoders.

    ResnetBlock2d    (B, C_in, H, W) -> (B, C_out, H, W)
    Downsample2d     (B, C, H, W)    -> (B, C, H/2, W/2)      strided conv, pad right/bottom by one
    Upsample2d       (B, C, H, W)    -> (B, C, 2H, 2W)        nearest x2, then a 3x3 conv
    SpatialAttention (B, C, *S)      -> (B, C, *S)            self-attention over all positions
    DownBlock2d / UpBlock2d / MidBlock2d: the stages of the encoder and decoder.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mmflow.models.attention import attention

__all__ = [
    "GROUP_NORM_EPS",
    "group_norm",
    "ResnetBlock2d",
    "Downsample2d",
    "Upsample2d",
    "SpatialAttention",
    "DownBlock2d",
    "UpBlock2d",
    "MidBlock2d",
]

GROUP_NORM_EPS = 1e-6  # every norm of the LDM/SD autoencoders


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm(groups, channels, eps=1e-6), refusing widths the groups do not divide."""
    if channels % groups != 0:
        raise ValueError(f"norm_num_groups {groups} does not divide the block width {channels}")
    return nn.GroupNorm(groups, channels, eps=GROUP_NORM_EPS)


class ResnetBlock2d(nn.Module):
    """x + conv(SiLU(norm(conv(SiLU(norm(x)))))); the skip is a 1x1 conv when the width changes.

    (B, C_in, H, W) -> (B, C_out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Downsample2d(nn.Module):
    """3x3 conv with stride 2 after padding one zero row/column at the bottom/right.

    The asymmetric pad (0, 1, 0, 1) is what LDM and diffusers use (their weights expect it):
    (B, C, H, W) -> (B, C, H/2, W/2) for even H, W.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # pad (left, right, top, bottom)


class Upsample2d(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class SpatialAttention(nn.Module):
    """Residual self-attention over every position of a feature map: (B, C, *S) -> (B, C, *S).

    GroupNorm, then q, k, v (one fused linear over channels), `num_heads` heads (the VAEs use one
    head as wide as the block), an output linear and the residual. Works for any number of spatial
    axes, so video and audio autoencoders can use it too.
    """

    def __init__(self, channels: int, groups: int, num_heads: int = 1, backend: str = "sdpa") -> None:
        super().__init__()
        if channels % num_heads != 0:
            raise ValueError(f"attention heads {num_heads} do not divide the width {channels}")
        self.num_heads, self.backend = num_heads, backend
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, N, C), N = prod(S)
        qkv = self.qkv(h).unflatten(-1, (3, self.num_heads, c // self.num_heads))  # (B, N, 3, H, D)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, D)
        out = attention(q, k, v, backend=self.backend)  # (B, H, N, D)
        out = self.proj(out.transpose(1, 2).flatten(2))  # (B, N, C)
        return x + out.transpose(1, 2).reshape(b, c, *spatial)


class DownBlock2d(nn.Module):
    """`num_layers` ResnetBlock2d (the first changes the width), then an optional Downsample2d."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, downsample: bool,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.res = nn.ModuleList(
            ResnetBlock2d(in_channels if i == 0 else out_channels, out_channels, groups, dropout)
            for i in range(num_layers)
        )
        self.downsample = Downsample2d(out_channels) if downsample else None

    def forward(self, x: Tensor) -> Tensor:
        for block in self.res:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class UpBlock2d(nn.Module):
    """`num_layers` ResnetBlock2d (the first changes the width), then an optional Upsample2d."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, upsample: bool,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.res = nn.ModuleList(
            ResnetBlock2d(in_channels if i == 0 else out_channels, out_channels, groups, dropout)
            for i in range(num_layers)
        )
        self.upsample = Upsample2d(out_channels) if upsample else None

    def forward(self, x: Tensor) -> Tensor:
        for block in self.res:
            x = block(x)
        return x if self.upsample is None else self.upsample(x)


class MidBlock2d(nn.Module):
    """ResnetBlock2d, SpatialAttention (optional), ResnetBlock2d at constant width: (B, C, H, W) -> same."""

    def __init__(self, channels: int, groups: int, use_attention: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.res1 = ResnetBlock2d(channels, channels, groups, dropout)
        self.attn = SpatialAttention(channels, groups) if use_attention else None
        self.res2 = ResnetBlock2d(channels, channels, groups, dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.res1(x)
        if self.attn is not None:
            x = self.attn(x)
        return self.res2(x)
