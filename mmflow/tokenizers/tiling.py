"""Spatial tiling for the VAEs: encode or decode a large frame as overlapping tiles blended together.

A conv VAE's activations grow with H x W: decoding a 256x256 clip at once holds every level's features
for the whole frame. `tiled_map` cuts the latent grid into overlapping square tiles, runs the encoder
or decoder on each (the video VAE's temporal chunking runs inside each tile), and cross-fades the
overlaps with linear ramps (as diffusers' AutoencoderKL / AutoencoderKLCogVideoX `tiled_decode` do)
into one output buffer, so peak memory is the output plus ONE tile's activations, not the frame's.

Tiling is approximate, not exact: convs see zero padding at tile edges where the whole frame has
neighbours, GroupNorm statistics are per tile instead of per frame, and the image VAE's mid-block
attention sees one tile. Overlap hides the seams; the error against untiled is measured in
tests/tokenizers/test_tiling.py. Sizes are in latent positions on both sides (a pixel tile is
`tile * spatial_factor`), so encode and decode tiles line up.

    out = tiled_map(decoder, z, SpatialTiling(tile=16, overlap=4), out_factor=8)  # z (..., h, w) -> (..., 8h, 8w)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mmflow.config import check

__all__ = ["SpatialTiling", "resolve_tiling", "tile_overlap_field", "tile_size_field", "tile_spans", "tiled_map",
           "validate_tiling"]


@dataclass(frozen=True)
class SpatialTiling:
    """Square tiles of `tile` latent positions a side; neighbours share at least `overlap` positions."""

    tile: int
    overlap: int


def tile_size_field() -> Any:
    """The `tile_latent_size` field of a VAE config (one definition for the image and video VAEs)."""
    return field(default=0, metadata={"min": 0, "help": "spatial tiling: tile side in latent positions (pixels: "
                                      "times the spatial factor); 0 = off, whole frames"})


def tile_overlap_field() -> Any:
    """The `tile_overlap` field of a VAE config."""
    return field(default=None, metadata={"help": "latent positions neighbouring tiles share and cross-fade; "
                                         "None = a quarter of the tile (diffusers' default overlap)"})


def validate_tiling(tile: int | None, overlap: int | None) -> None:
    """Raise a ConfigError naming `tile_latent_size` or `tile_overlap` unless they make sense together."""
    check(tile is None or (isinstance(tile, int) and tile >= 0), "tile_latent_size",
          f"must be an integer >= 0 (0 = no tiling), got {tile!r}")
    if overlap is None:
        return
    check(isinstance(overlap, int) and overlap >= 0, "tile_overlap",
          f"must be an integer >= 0 or None, got {overlap!r}")
    check(not tile or overlap < tile, "tile_overlap",
          f"must be smaller than tile_latent_size ({tile}) so that tiles advance, got {overlap}")


def resolve_tiling(config: Any, tile_latent_size: int | None = None,
                   tile_overlap: int | None = None) -> SpatialTiling | None:
    """The tiling of one encode/decode call: the per-call arguments where given, else the VAE config's
    fields of the same names; None when tiling is off (tile size 0)."""
    tile = config.tile_latent_size if tile_latent_size is None else tile_latent_size
    overlap = config.tile_overlap if tile_overlap is None else tile_overlap
    validate_tiling(tile, overlap)
    if not tile:
        return None
    return SpatialTiling(tile, tile // 4 if overlap is None else overlap)


def tile_spans(size: int, tiling: SpatialTiling) -> list[tuple[int, int]]:
    """[start, end) of the tiles along an axis of `size` positions: as few full tiles as keep every
    neighbour overlap >= tiling.overlap, spread evenly so the last one ends at `size` (no ragged tile)."""
    tile, overlap = tiling.tile, tiling.overlap
    if size <= tile:
        return [(0, size)]
    n = 1 + -(-(size - tile) // (tile - overlap))  # ceil: tiles needed at stride tile - overlap
    return [(k * (size - tile) // (n - 1), k * (size - tile) // (n - 1) + tile) for k in range(n)]


def _ramps(spans: list[tuple[int, int]], factor: int, like: Tensor) -> list[Tensor]:
    """Per tile, a 1-D blending weight in output units: linear ramps over the overlap with each neighbour.

    Ramp values (i + 1) / (L + 1) are never 0, so every output position has positive total weight; where
    exactly two tiles overlap, the two weights sum to 1 (a plain cross-fade)."""
    out = []
    for k, (start, end) in enumerate(spans):
        w = torch.ones((end - start) * factor, dtype=like.dtype, device=like.device)
        if k > 0:
            n = (spans[k - 1][1] - start) * factor
            w[:n] = torch.minimum(w[:n], torch.arange(1, n + 1, dtype=w.dtype, device=w.device) / (n + 1))
        if k + 1 < len(spans):
            n = (end - spans[k + 1][0]) * factor
            w[-n:] = torch.minimum(w[-n:], torch.arange(n, 0, -1, dtype=w.dtype, device=w.device) / (n + 1))
        out.append(w)
    return out


def tiled_map(fn: Callable[[Tensor], Tensor], x: Tensor, tiling: SpatialTiling | None, in_factor: int = 1,
              out_factor: int = 1) -> Tensor:
    """Apply `fn` to x (..., H, W) tile by tile over its last two axes and blend the results.

    The grid has (H / in_factor, W / in_factor) positions; `fn` maps a tile of (h, w) positions, i.e.
    x[..., h*in_factor, w*in_factor], to (..., h*out_factor, w*out_factor) with any leading shape (channels
    and frames may change). Decode: in_factor 1, out_factor = spatial factor; encode: the reverse.
    Without tiling, or when the grid fits in one tile, this is exactly fn(x).
    """
    gh, gw = x.shape[-2] // in_factor, x.shape[-1] // in_factor
    if tiling is None or (gh <= tiling.tile and gw <= tiling.tile):
        return fn(x)
    rows, cols = tile_spans(gh, tiling), tile_spans(gw, tiling)
    fi, fo = in_factor, out_factor
    out: Tensor | None = None
    total: Tensor | None = None
    row_w: list[Tensor] = []
    col_w: list[Tensor] = []
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            y = fn(x[..., r0 * fi:r1 * fi, c0 * fi:c1 * fi])  # (..., (r1-r0)*fo, (c1-c0)*fo)
            if out is None:  # the output's leading shape is known after the first tile
                out = y.new_zeros(*y.shape[:-2], gh * fo, gw * fo)
                total = y.new_zeros(gh * fo, gw * fo)  # sum of weights per output position
                row_w, col_w = _ramps(rows, fo, y), _ramps(cols, fo, y)
            w = row_w[i][:, None] * col_w[j][None, :]  # ((r1-r0)*fo, (c1-c0)*fo)
            assert out is not None and total is not None
            out[..., r0 * fo:r1 * fo, c0 * fo:c1 * fo].addcmul_(y, w)
            total[r0 * fo:r1 * fo, c0 * fo:c1 * fo] += w
            del y  # free this tile's output before the next tile runs
    assert out is not None and total is not None
    return out.div_(total)
