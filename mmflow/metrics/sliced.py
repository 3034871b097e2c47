"""Sliced Wasserstein distance between two point clouds (N, d) and (M, d).

Projects both sets onto random unit directions and averages the closed-form 1-D Wasserstein
distance (a comparison of sorted values) over directions. Cheap and meaningful
for the low-dimensional samples used to check toy models.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["random_directions", "sliced_wasserstein", "wasserstein_1d"]


def random_directions(
    n: int, d: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> Tensor:
    """`n` directions uniform on the unit sphere in R^d, shape (n, d), float64.

    Drawn on the generator's device (a generator only works there) and then moved to `device`,
    so the same seed gives the same directions whatever device the data lives on.
    """
    if n < 1 or d < 1:
        raise ValueError(f"need n >= 1 and d >= 1, got n={n}, d={d}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    theta = torch.randn(n, d, generator=generator, device=gen_device, dtype=torch.float64)
    theta = theta / theta.norm(dim=1, keepdim=True)  # a normalised Gaussian is uniform on the sphere
    return theta if device is None else theta.to(device)


def _quantiles(sorted_values: Tensor, levels: Tensor) -> Tensor:
    """Linearly interpolated empirical quantiles along the last dim: (..., N) sorted, (K,) -> (..., K)."""
    n = sorted_values.shape[-1]
    pos = levels * (n - 1)
    lo = pos.floor().long().clamp(max=n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    w = pos - lo.to(pos.dtype)
    return sorted_values[..., lo] * (1 - w) + sorted_values[..., hi] * w


def wasserstein_1d(x: Tensor, y: Tensor, p: int = 1) -> Tensor:
    """1-D Wasserstein-p distance between the samples along the last dim: x (..., N), y (..., M) -> (...).

    Equal sizes use the exact sorted matching. For N != M both empirical quantile functions are
    interpolated on a common grid of K = max(N, M) levels k / (K - 1); at equal sizes that grid
    hits the sorted values exactly, so both cases are one formula.
    """
    if p < 1:
        raise ValueError(f"p must be >= 1, got {p}")
    # Samples on the last, contiguous dim: sorting along a strided dim is several times slower.
    xs, ys = x.contiguous().sort(dim=-1).values, y.contiguous().sort(dim=-1).values
    if xs.shape[-1] != ys.shape[-1]:
        k = max(xs.shape[-1], ys.shape[-1])
        levels = torch.linspace(0.0, 1.0, k, dtype=xs.dtype, device=xs.device)
        xs, ys = _quantiles(xs, levels), _quantiles(ys, levels)
    diff = (xs - ys).abs()
    if p == 1:
        return diff.mean(dim=-1)
    return diff.pow(p).mean(dim=-1).pow(1.0 / p)


def sliced_wasserstein(
    x: Tensor,
    y: Tensor,
    n_projections: int = 256,
    generator: torch.Generator | None = None,
    p: int = 1,
    *,
    directions: Tensor | None = None,
) -> Tensor:
    """Mean over random unit directions theta of W_p(<x, theta>, <y, theta>); a float64 scalar.

    x: (N, d), y: (M, d). Directions are drawn with `generator` (deterministic given its state),
    or passed as `directions` (n, d) to compare several pairs on the same slices. Note that for
    p > 1 this averages W_p itself, not W_p^p followed by a p-th root; for p = 1 they agree.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected (N, d) and (M, d) with the same d, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] == 0 or y.shape[0] == 0:
        raise ValueError("both point sets must be non-empty")
    if directions is None:
        directions = random_directions(n_projections, x.shape[1], generator, device=x.device)
    elif directions.ndim != 2 or directions.shape[1] != x.shape[1]:
        raise ValueError(f"directions must be (n, {x.shape[1]}), got {tuple(directions.shape)}")
    # float64: the floors this is compared against are small, and sorting is the cost, not precision.
    theta = directions.to(device=x.device, dtype=torch.float64)  # (P, d)
    px = theta @ x.detach().to(torch.float64).T  # (P, N)
    py = theta @ y.detach().to(torch.float64).T  # (P, M)
    return wasserstein_1d(px, py, p=p).mean()
