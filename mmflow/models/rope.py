"""Positional encodings of latent tokens: rotary (RoPE over 1, 2 or 3 grid axes) and SD3's 2-D sincos table.

RoPE is the default for new models: it rotates each (even, odd) pair of a query/key head vector by
an angle proportional to the token's grid position, so q . k depends only on the position
*difference* and a model runs at any latent size. The head dimension is split between the grid
axes (audio: L; image: H, W; video: T, H, W); each axis gets an even number of channels.

The sincos table exists for SD3 weights: a fixed (M*M, D) table over an M x M patch grid, added to
the patch embeddings and center-cropped to the latent's grid at run time.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["rope_axis_dims", "rope_angles", "apply_rope", "sincos_2d_table", "crop_sincos_table"]


def rope_axis_dims(head_dim: int, num_axes: int) -> tuple[int, ...]:
    """Channels of a head given to each grid axis: even, summing to head_dim; spare pairs go to the last axes.

    (64, 3) -> (20, 22, 22): video's spatial axes get the extra pairs, time the fewest.
    """
    pairs = head_dim // 2
    if head_dim % 2 or pairs < num_axes:
        raise ValueError(f"rope needs an even head_dim with at least one channel pair per axis; "
                         f"got head_dim={head_dim} for {num_axes} axes")
    base, extra = divmod(pairs, num_axes)
    return tuple(2 * (base + (1 if i >= num_axes - extra else 0)) for i in range(num_axes))


def rope_angles(grid: tuple[int, ...], head_dim: int, theta: float = 10000.0,
                device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """cos and sin of the rotation angles, each (N, head_dim // 2) for N = prod(grid) tokens in row-major order.

    The angle of token at integer position p (one coordinate per axis) in pair j of axis a is
    p_a * theta ** (-2 j / d_a), d_a the axis's channels (`rope_axis_dims`). Computed in float32.
    """
    dims = rope_axis_dims(head_dim, len(grid))
    coords = torch.meshgrid(*[torch.arange(n, device=device, dtype=torch.float32) for n in grid], indexing="ij")
    angles = []
    for coord, d in zip(coords, dims):
        freqs = theta ** (-torch.arange(0, d, 2, device=device, dtype=torch.float32) / d)  # (d/2,)
        angles.append(coord.reshape(-1, 1) * freqs[None])  # (N, d/2)
    angle = torch.cat(angles, dim=-1)  # (N, head_dim/2)
    return torch.cos(angle), torch.sin(angle)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x[2j], x[2j+1]) of x (B, H, N, head_dim) by the angles of cos, sin (N, head_dim/2)."""
    pairs = x.to(torch.promote_types(x.dtype, torch.float32)).unflatten(-1, (-1, 2))  # (B, H, N, head_dim/2, 2)
    x1, x2 = pairs.unbind(-1)  # (B, H, N, head_dim/2) each
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (B, H, N, head_dim/2, 2)
    return out.flatten(-2).to(x.dtype)


def sincos_2d_table(dim: int, size: int, base_size: int | None = None) -> Tensor:
    """SD3's positional table (size * size, dim) over a size x size patch grid, rows in row-major order.

    Positions are scaled by base_size / size (SD3: base_size = sample_size // patch_size); the first
    dim/2 channels encode the column, the last dim/2 the row, each as [sin, cos] of pos * 10000^(-k/(dim/4)).
    """
    if dim % 4:
        raise ValueError(f"the 2-D sincos table needs hidden_size divisible by 4, got {dim}")
    base_size = base_size or size
    pos = torch.arange(size, dtype=torch.float32) / (size / base_size)  # (size,)
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4.0))  # (dim/4,)

    def embed(p: Tensor) -> Tensor:  # (M,) -> (M, dim/2)
        out = torch.outer(p.reshape(-1), omega)  # float64
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    rows, cols = torch.meshgrid(pos, pos, indexing="ij")  # (size, size) each
    return torch.cat([embed(cols), embed(rows)], dim=1).float()  # (size*size, dim)


def crop_sincos_table(table: Tensor, size: int, grid: tuple[int, int]) -> Tensor:
    """Center crop of a (1, size*size, D) table to grid (gh, gw) patches -> (1, gh*gw, D)."""
    gh, gw = grid
    for axis, n in (("H", gh), ("W", gw)):
        if n > size:
            raise ValueError(f"latent grid axis {axis} has {n} patches, more than the sincos position table's "
                             f"{size} (pos_embed_max_size); use a smaller latent or pos_embed='rope'")
    top, left = (size - gh) // 2, (size - gw) // 2
    spatial = table.reshape(1, size, size, -1)[:, top:top + gh, left:left + gw, :]  # (1, gh, gw, D)
    return spatial.reshape(1, gh * gw, -1)
