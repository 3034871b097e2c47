"""Tests for mmflow/metrics/sliced.py: closed forms of (sliced) Wasserstein distances."""

from __future__ import annotations

import math

import pytest
import torch

from mmflow.metrics.sliced import random_directions, sliced_wasserstein, wasserstein_1d


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def exact_w1_1d(x: torch.Tensor, y: torch.Tensor) -> float:
    """Exact W1 between two 1-D empirical distributions: integral of |F_x - F_y| over the line."""
    xs, ys = x.double().sort().values, y.double().sort().values
    grid = torch.cat([xs, ys]).sort().values
    fx = torch.searchsorted(xs, grid[:-1], right=True).double() / len(xs)
    fy = torch.searchsorted(ys, grid[:-1], right=True).double() / len(ys)
    return float(((fx - fy).abs() * grid.diff()).sum())


def test_random_directions_are_unit_and_deterministic():
    a = random_directions(512, 5, gen(3))
    assert a.shape == (512, 5) and a.dtype == torch.float64
    torch.testing.assert_close(a.norm(dim=1), torch.ones(512, dtype=torch.float64))
    assert torch.equal(a, random_directions(512, 5, gen(3)))
    # uniform on the sphere: each coordinate has mean 0 and E[theta_i^2] = 1/d
    assert a.mean(0).abs().max() < 0.1 and (a.pow(2).mean(0) - 0.2).abs().max() < 0.05


def test_equal_sizes_is_sorted_matching():
    x, y = torch.randn(50, 3, generator=gen(1)), torch.randn(50, 3, generator=gen(2))
    expected = (x.double().sort(0).values - y.double().sort(0).values).abs().mean(0)
    torch.testing.assert_close(wasserstein_1d(x.double().T, y.double().T), expected, rtol=0, atol=1e-14)


def test_1d_gaussian_shift_gives_mu():
    g = gen(0)
    x = torch.randn(20000, 1, generator=g)
    for mu in (0.5, -1.5, 3.0):
        y = torch.randn(20000, 1, generator=g) + mu
        w = sliced_wasserstein(x, y, n_projections=8, generator=gen(1))  # in 1-D every direction is +-1
        assert w.shape == () and w.dtype == torch.float64
        assert abs(float(w) - abs(mu)) < 0.04


def test_shifted_copy_is_mean_abs_projection_of_shift():
    d = 4
    x = torch.randn(200, d, generator=gen(0), dtype=torch.float64)
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    w = sliced_wasserstein(x, x + shift, n_projections=4096, generator=gen(7))
    # Projections of a shifted copy differ by the constant <shift, theta>, so on the same directions
    # the sliced W1 is exactly mean |<shift, theta>| ...
    theta = random_directions(4096, d, gen(7))
    torch.testing.assert_close(w, (theta @ shift).abs().mean(), rtol=1e-12, atol=1e-12)
    # ... and for uniform theta, E|<s, theta>| = |s| Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2)).
    closed = float(shift.norm()) * math.gamma(d / 2) / (math.sqrt(math.pi) * math.gamma((d + 1) / 2))
    assert float(w) == pytest.approx(closed, rel=0.03)
    # p = 2: per direction still |<shift, theta>|, so the same value.
    w2 = sliced_wasserstein(x, x + shift, n_projections=4096, generator=gen(7), p=2)
    torch.testing.assert_close(w2, w, rtol=1e-10, atol=1e-10)


def test_unequal_sizes_close_to_exact_w1():
    x = torch.randn(3000, generator=gen(0), dtype=torch.float64)
    y = 1.0 + 2.0 * torch.randn(1100, generator=gen(1), dtype=torch.float64)
    approx = float(wasserstein_1d(x, y))
    assert approx == pytest.approx(exact_w1_1d(x, y), rel=0.01)
    # equal sizes: the interpolation grid hits the sorted values, so the result is exact
    assert float(wasserstein_1d(x[:1100], y)) == pytest.approx(exact_w1_1d(x[:1100], y), rel=1e-10)
    # a single point vs a set: |point - each|, averaged over the larger set's quantiles
    one = torch.zeros(1, dtype=torch.float64)
    assert float(wasserstein_1d(one, y)) == pytest.approx(float(y.abs().mean()), rel=0.01)


def test_determinism_and_seed_dependence():
    x, y = torch.randn(500, 2, generator=gen(0)), torch.randn(400, 2, generator=gen(1)) * 1.3
    a = sliced_wasserstein(x, y, 64, generator=gen(5))
    assert torch.equal(a, sliced_wasserstein(x, y, 64, generator=gen(5)))
    assert not torch.equal(a, sliced_wasserstein(x, y, 64, generator=gen(6)))
    theta = random_directions(64, 2, gen(5))
    assert torch.equal(a, sliced_wasserstein(x, y, directions=theta))


def test_zero_for_identical_and_permuted_sets():
    x = torch.randn(300, 3, generator=gen(0))
    perm = torch.randperm(300, generator=gen(1))
    assert float(sliced_wasserstein(x, x[perm], 32, generator=gen(2))) == 0.0


def test_bad_shapes():
    with pytest.raises(ValueError, match="same d"):
        sliced_wasserstein(torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="directions"):
        sliced_wasserstein(torch.zeros(4, 2), torch.zeros(4, 2), directions=torch.ones(3, 3))
    with pytest.raises(ValueError, match="p must be"):
        wasserstein_1d(torch.zeros(4), torch.zeros(4), p=0)
