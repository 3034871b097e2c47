"""Latents <-> token sequences for 1-, 2- and 3-D latents: audio (B, C, L), image (B, C, H, W), video (B, C, T, H, W).

A latent with k spatial axes is cut into non-overlapping patches of `patch_size` (one entry per axis);
the patch grid is flattened in row-major order (T, then H, then W) and each token holds one patch
ordered channels-last, (p_1, ..., p_k, C), as DiT's unpatchify and SD3's output projection do.
"""

from __future__ import annotations

import math

from torch import Tensor

__all__ = ["AXIS_NAMES", "LATENT_KINDS", "check_latent", "patch_grid", "patchify", "unpatchify"]

AXIS_NAMES: dict[int, tuple[str, ...]] = {1: ("L",), 2: ("H", "W"), 3: ("T", "H", "W")}
LATENT_KINDS: dict[int, str] = {1: "audio latents (B, C, L)", 2: "image latents (B, C, H, W)",
                                3: "video latents (B, C, T, H, W)"}


def check_latent(x: Tensor, patch_size: tuple[int, ...], channels: int | None = None) -> None:
    """Raise ValueError naming the fault if x does not fit `patch_size` (rank, divisibility) or `channels`."""
    k = len(patch_size)
    if k not in AXIS_NAMES:
        raise ValueError(f"patch_size must have 1, 2 or 3 entries (one per latent axis), got {tuple(patch_size)}")
    if x.ndim != k + 2:
        got = LATENT_KINDS.get(x.ndim - 2, f"a rank-{x.ndim} tensor")
        raise ValueError(f"patch_size {tuple(patch_size)} takes {LATENT_KINDS[k]} (rank {k + 2}); "
                         f"got {got} of shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"expected {channels} latent channels (dim 1), got {x.shape[1]} in shape {tuple(x.shape)}")
    for i, (name, size, p) in enumerate(zip(AXIS_NAMES[k], x.shape[2:], patch_size)):
        if size % p:
            raise ValueError(f"latent axis {name} (dim {i + 2}) has size {size}, not divisible by its patch size {p} "
                             f"(shape {tuple(x.shape)}, patch_size {tuple(patch_size)})")


def patch_grid(spatial: tuple[int, ...], patch_size: tuple[int, ...]) -> tuple[int, ...]:
    """Grid of patches (g_1, ..., g_k) for spatial sizes (S_1, ..., S_k)."""
    return tuple(s // p for s, p in zip(spatial, patch_size))


def patchify(x: Tensor, patch_size: tuple[int, ...]) -> tuple[Tensor, tuple[int, ...]]:
    """x (B, C, S_1..S_k) -> tokens (B, N, prod(p) * C) with N = prod(S_i / p_i), and the grid (S_i / p_i)."""
    check_latent(x, patch_size)
    b, c, *spatial = x.shape
    k = len(patch_size)
    grid = patch_grid(tuple(spatial), patch_size)
    split = [b, c] + [n for g, p in zip(grid, patch_size) for n in (g, p)]
    x = x.reshape(split)  # (B, C, g_1, p_1, ..., g_k, p_k)
    order = [0, *(2 + 2 * i for i in range(k)), *(3 + 2 * i for i in range(k)), 1]
    x = x.permute(order)  # (B, g_1..g_k, p_1..p_k, C)
    return x.reshape(b, math.prod(grid), math.prod(patch_size) * c), grid


def unpatchify(tokens: Tensor, grid: tuple[int, ...], patch_size: tuple[int, ...], channels: int) -> Tensor:
    """tokens (B, N, prod(p) * C) on `grid` -> latent (B, C, g_1 p_1, ..., g_k p_k); inverse of `patchify`."""
    b, n, d = tokens.shape
    k = len(patch_size)
    if n != math.prod(grid) or d != math.prod(patch_size) * channels:
        raise ValueError(f"tokens {tuple(tokens.shape)} do not fit grid {tuple(grid)} x patch {tuple(patch_size)} "
                         f"x {channels} channels")
    x = tokens.reshape(b, *grid, *patch_size, channels)  # (B, g_1..g_k, p_1..p_k, C)
    order = [0, 2 * k + 1, *(j for i in range(k) for j in (1 + i, 1 + k + i))]
    x = x.permute(order)  # (B, C, g_1, p_1, ..., g_k, p_k)
    return x.reshape(b, channels, *(g * p for g, p in zip(grid, patch_size)))
