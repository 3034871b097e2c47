"""Tests for mmflow/metrics/two_sample.py: values against their data-vs-data floors."""

from __future__ import annotations

import math

import pytest
import torch

from mmflow.metrics import (
    TwoSampleReport,
    energy_distance,
    random_directions,
    sliced_wasserstein,
    two_sample_report,
)


def mixture(n: int, seed: int) -> torch.Tensor:
    """Eight Gaussians on a circle, (n, 2): the usual toy target."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, 8, (n,), generator=g)
    angle = k * (2 * math.pi / 8)
    centres = 2.0 * torch.stack([angle.cos(), angle.sin()], dim=1)
    return centres + 0.2 * torch.randn(n, 2, generator=g)


def test_floor_below_shifted_and_scaled_samples():
    data, again, third = mixture(2000, 0), mixture(2000, 1), mixture(2000, 2)
    good = two_sample_report(third, data, again)
    assert 0.3 < good.ratio_sliced_w1 < 3 and good.ratio_energy < 5
    for bad_samples in (third + torch.tensor([0.3, 0.0]), 1.3 * third):
        bad = two_sample_report(bad_samples, data, again)
        assert bad.floor_sliced_w1 == good.floor_sliced_w1 and bad.floor_energy == good.floor_energy
        assert bad.sliced_w1 > 3 * bad.floor_sliced_w1 and bad.ratio_sliced_w1 > 3
        assert bad.energy > 10 * bad.floor_energy and bad.ratio_energy > 10


def test_same_directions_for_value_and_floor():
    data, again = mixture(500, 0), mixture(500, 1)
    report = two_sample_report(again, data, again, n_projections=64, seed=3)
    # samples == data_again: value and floor are the same computation, so exactly equal.
    assert report.sliced_w1 == report.floor_sliced_w1 and report.ratio_sliced_w1 == 1.0
    assert report.energy == report.floor_energy
    theta = random_directions(64, 2, torch.Generator().manual_seed(3))
    assert report.floor_sliced_w1 == float(sliced_wasserstein(again, data, directions=theta))
    assert report.floor_energy == float(energy_distance(again, data))


def test_deterministic_given_seed():
    data, again, samples = mixture(400, 0), mixture(400, 1), mixture(400, 2) * 1.1
    a = two_sample_report(samples, data, again, seed=5)
    assert a == two_sample_report(samples, data, again, seed=5)
    assert a.sliced_w1 != two_sample_report(samples, data, again, seed=6).sliced_w1


def test_report_dict_and_format():
    r = TwoSampleReport(sliced_w1=0.04, energy=0.003, floor_sliced_w1=0.01, floor_energy=0.0002)
    assert r.ratio_sliced_w1 == 4.0 and r.ratio_energy == 15.0
    d = r.to_dict()
    assert d == {
        "sliced_w1": 0.04,
        "energy": 0.003,
        "floor_sliced_w1": 0.01,
        "floor_energy": 0.0002,
        "ratio_sliced_w1": 4.0,
        "ratio_energy": 15.0,
    }
    line = r.format()
    assert "\n" not in line
    assert line == "sliced W1 0.04 (floor 0.01, 4x) | energy 0.003 (floor 0.0002, 15x)"
    zero = TwoSampleReport(0.1, 0.0, 0.0, 0.0)
    assert zero.ratio_sliced_w1 == math.inf and math.isnan(zero.ratio_energy)


def test_several_references_average_value_and_floor():
    g = torch.Generator().manual_seed(0)
    refs = [torch.randn(500, 2, generator=g) for _ in range(3)]
    again = torch.randn(500, 2, generator=g)
    samples = torch.randn(500, 2, generator=g) + 0.3
    avg = two_sample_report(samples, refs, again, seed=1)
    singles = [two_sample_report(samples, r, again, seed=1) for r in refs]
    assert avg.sliced_w1 == pytest.approx(sum(s.sliced_w1 for s in singles) / 3)
    assert avg.floor_energy == pytest.approx(sum(s.floor_energy for s in singles) / 3)
    with pytest.raises(ValueError, match="at least one"):
        two_sample_report(samples, [], again)
