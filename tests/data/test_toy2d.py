"""Tests for mmflow/data/toy2d.py: the four labelled 2-D toy distributions and the fixed-draw dataset."""

from __future__ import annotations

import math

import pytest
import torch

from mmflow.data.toy2d import TOY_DATASETS, Toy2DDataset, sample_toy

N = 8000
NAMES = ["eight_gaussians", "two_moons", "checkerboard", "spirals"]


def test_registry_lists_the_four_datasets() -> None:
    assert sorted(TOY_DATASETS) == sorted(NAMES)
    assert {k: v[1] for k, v in TOY_DATASETS.items()} == {
        "eight_gaussians": 8, "two_moons": 2, "checkerboard": 8, "spirals": 2}


@pytest.mark.parametrize("name", NAMES)
def test_shapes_dtypes_labels(name: str) -> None:
    x, y = sample_toy(name, 500, seed=0)
    assert x.shape == (500, 2) and x.dtype == torch.float32
    assert y.shape == (500,) and y.dtype == torch.int64
    k = TOY_DATASETS[name][1]
    assert y.min() >= 0 and y.max() < k
    assert set(y.tolist()) == set(range(k))  # every class occurs
    assert torch.isfinite(x).all()
    assert x.abs().max() < 6.5  # "roughly in [-4, 4]^2"


@pytest.mark.parametrize("name", NAMES)
def test_determinism_by_seed(name: str) -> None:
    x1, y1 = sample_toy(name, 300, seed=5)
    x2, y2 = sample_toy(name, 300, seed=5)
    x3, y3 = sample_toy(name, 300, seed=6)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)


def test_eight_gaussians_geometry() -> None:
    x, y = sample_toy("eight_gaussians", N, seed=1)
    # E|x| for a 2-D Gaussian of std 0.5 around a point at radius 4 is about sqrt(16 + 0.25)
    assert x.norm(dim=1).mean().item() == pytest.approx(4.0, abs=0.1)
    angles = torch.arange(8) * (2 * math.pi / 8)
    centres = 4.0 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)  # (8, 2)
    for k in range(8):
        pts = x[y == k]
        assert abs(len(pts) / N - 1 / 8) < 0.025  # balanced
        assert (pts.mean(0) - centres[k]).norm().item() < 0.08  # standard error ~0.016 per axis
        std = pts.std(dim=0)
        assert torch.allclose(std, torch.full((2,), 0.5), atol=0.05)
        # each point is closest to its own centre (components 2.8 apart = 5.7 std; a few may cross)
        nearest = torch.cdist(pts, centres).argmin(dim=1)
        assert (nearest == k).float().mean() > 0.97


def test_checkerboard_only_dark_squares_and_label_matches_square() -> None:
    x, y = sample_toy("checkerboard", N, seed=2)
    assert x.min() >= -4.0 and x.max() <= 4.0
    col = torch.floor((x[:, 0] + 4.0) / 2.0).long().clamp(0, 3)
    row = torch.floor((x[:, 1] + 4.0) / 2.0).long().clamp(0, 3)
    assert ((col + row) % 2 == 0).all()  # dark squares only: 8 of 16 cells
    assert torch.equal(y, 2 * row + col // 2)  # label indexes the dark square row by row
    counts = torch.bincount(2 * row + col // 2, minlength=8).float() / N
    assert (counts - 1 / 8).abs().max() < 0.025
    # uniform within a square: the offset inside the cell has mean 1 and variance 4/12
    inside = x - (torch.stack([col, row], 1) * 2.0 - 4.0)
    assert torch.allclose(inside.mean(0), torch.ones(2), atol=0.05)
    assert torch.allclose(inside.var(0), torch.full((2,), 4 / 12), atol=0.03)


@pytest.mark.parametrize("name", ["two_moons", "spirals"])
def test_binary_labels_balanced(name: str) -> None:
    _, y = sample_toy(name, N, seed=3)
    assert abs(y.float().mean().item() - 0.5) < 0.03


def test_two_moons_points_lie_on_their_own_moon() -> None:
    x, y = sample_toy("two_moons", N, seed=4)
    # sklearn moons (unit circles centred at (0,0) and (1,0.5)) after x -> 2 (x - (0.5, 0.25))
    centres = torch.tensor([[-1.0, -0.5], [1.0, 0.5]])
    dist_own = (x - centres[y]).norm(dim=1)
    dist_other = (x - centres[1 - y]).norm(dim=1)
    assert (dist_own - 2.0).abs().mean() < 0.25  # radius 2, noise 0.2
    assert (dist_other - 2.0).abs().mean() > 0.6
    assert (x[y == 0, 1] > -1.2).all() and (x[y == 1, 1] < 1.2).all()  # upper / lower half circles


def test_spirals_points_lie_on_their_own_arm() -> None:
    x, y = sample_toy("spirals", N, seed=5)
    r = 2.75 * x.norm(dim=1)
    far = r > 4.0  # the angle is ill-defined near the origin

    def residual(labels: torch.Tensor) -> torch.Tensor:
        d = torch.atan2(x[:, 1], x[:, 0]) - r - math.pi * labels
        return torch.remainder(d + math.pi, 2 * math.pi) - math.pi  # wrapped to [-pi, pi)

    own = residual(y)[far].abs().median()
    swapped = residual(1 - y)[far].abs().median()
    assert own < 0.5  # radial noise 0.15 * 2.75 moves the expected angle too
    assert swapped > 2.0


def test_unknown_name_lists_known() -> None:
    with pytest.raises(ValueError, match="moons") as info:
        sample_toy("moons", 10, seed=0)
    for name in NAMES:
        assert name in str(info.value)


def test_dataset_len_getitem() -> None:
    ds = Toy2DDataset("checkerboard", 64, seed=7)
    assert len(ds) == 64
    x, y = sample_toy("checkerboard", 64, seed=7)
    xi, yi = ds[10]
    assert xi.shape == (2,) and yi.shape == ()
    assert torch.equal(xi, x[10]) and yi.item() == y[10].item()
    # a fixed draw: indexing twice gives the same item
    assert torch.equal(ds[3][0], ds[3][0])
    loader = torch.utils.data.DataLoader(ds, batch_size=16)
    bx, by = next(iter(loader))
    assert bx.shape == (16, 2) and by.shape == (16,)
    assert torch.equal(bx, x[:16])
