"""Tests for mmflow/metrics/energy.py: exact identities of the energy-distance V-statistic."""

from __future__ import annotations

import math
import time

import pytest
import torch

from mmflow.metrics.energy import energy_distance, mean_pairwise_distance


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def brute_force(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, y = x.double(), y.double()

    def mean_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a[:, None, :] - b[None, :, :]).pow(2).sum(-1).sqrt().mean()

    return 2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y)


def test_identical_sets_give_exactly_zero():
    x = torch.randn(1000, 2, generator=gen(0))
    assert float(energy_distance(x, x)) == 0.0
    assert float(energy_distance(x, x.clone(), chunk=300)) == 0.0


def test_matches_brute_force_small():
    x = torch.randn(37, 3, generator=gen(0), dtype=torch.float64)
    y = torch.randn(23, 3, generator=gen(1), dtype=torch.float64) * 1.5 + 0.3
    torch.testing.assert_close(energy_distance(x, y), brute_force(x, y), rtol=1e-12, atol=1e-14)


def test_chunked_equals_unchunked_and_symmetric():
    x = torch.randn(60, 2, generator=gen(0))
    y = torch.randn(45, 2, generator=gen(1)) + torch.tensor([0.5, 0.0])
    full = energy_distance(x, y, chunk=10_000)
    for chunk in (7, 16, 50):
        torch.testing.assert_close(energy_distance(x, y, chunk=chunk), full, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(energy_distance(y, x), full, rtol=1e-12, atol=1e-14)


def test_grows_with_shift_and_is_nonnegative():
    x = torch.randn(800, 2, generator=gen(0))
    y = torch.randn(800, 2, generator=gen(1))
    values = [float(energy_distance(x, y + torch.tensor([s, 0.0]))) for s in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert all(v >= 0 for v in values)
    assert values == sorted(values) and values[-1] > 10 * values[0]


def test_1d_gaussian_shift_closed_form():
    # X ~ N(0,1), Y ~ N(mu,1): X - Y ~ N(-mu, 2), and E|N(m, s^2)| = s sqrt(2/pi) e^{-m^2/2s^2} + m erf(m / (s sqrt 2)),
    # so D = 2 E|X - Y| - 2 E|X - X'| with E|X - X'| = 2 / sqrt(pi).
    mu, s = 1.0, math.sqrt(2.0)
    e_xy = s * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * s**2)) + mu * math.erf(mu / (s * math.sqrt(2)))
    closed = 2 * e_xy - 2 * (2 / math.sqrt(math.pi))
    x = torch.randn(4000, 1, generator=gen(0), dtype=torch.float64)
    y = torch.randn(4000, 1, generator=gen(1), dtype=torch.float64) + mu
    assert float(energy_distance(x, y)) == pytest.approx(closed, rel=0.1)


def test_mean_pairwise_distance_self_includes_zero_diagonal():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert float(mean_pairwise_distance(x, x)) == pytest.approx(2 * 5.0 / 4)


def test_ten_thousand_points_is_fast():
    x = torch.randn(10_000, 2, generator=gen(0))
    y = torch.randn(10_000, 2, generator=gen(1))
    start = time.perf_counter()
    value = float(energy_distance(x, y))
    elapsed = time.perf_counter() - start
    assert 0.0 <= value < 0.01  # same distribution: only sampling noise, O(1/N)
    assert elapsed < 10.0, f"energy_distance on 10k x 10k took {elapsed:.1f} s (budget ~3 s)"


def test_bad_shapes():
    with pytest.raises(ValueError, match="same d"):
        energy_distance(torch.zeros(3, 2), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="chunk"):
        energy_distance(torch.zeros(3, 2), torch.zeros(3, 2), chunk=0)
