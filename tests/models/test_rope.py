"""Tests for mmflow/models/rope.py: rotary embeddings over 1-3 axes and SD3's sincos table."""

from __future__ import annotations

import itertools

import pytest
import torch

from mmflow.models.rope import apply_rope, crop_sincos_table, rope_angles, rope_axis_dims, sincos_2d_table


def test_axis_dims_are_even_and_fill_the_head() -> None:
    assert rope_axis_dims(64, 3) == (20, 22, 22)
    assert rope_axis_dims(64, 2) == (32, 32)
    assert rope_axis_dims(16, 1) == (16,)
    for head_dim, k in itertools.product((8, 12, 30, 64, 72), (1, 2, 3)):
        dims = rope_axis_dims(head_dim, k)
        assert sum(dims) == head_dim and all(d % 2 == 0 and d >= 2 for d in dims)
    with pytest.raises(ValueError, match="head_dim=4 for 3 axes"):
        rope_axis_dims(4, 3)


def _rotated_dots(grid: tuple[int, ...], head_dim: int = 12) -> tuple[torch.Tensor, list[tuple[int, ...]]]:
    """dots[i, j] = rope(q at position i) . rope(k at position j) for one fixed q, k."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(head_dim, generator=g), torch.randn(head_dim, generator=g)
    cos, sin = rope_angles(grid, head_dim, theta=100.0)
    n = cos.shape[0]
    qr = apply_rope(q.expand(1, 1, n, head_dim), cos, sin)[0, 0]  # (N, Dh)
    kr = apply_rope(k.expand(1, 1, n, head_dim), cos, sin)[0, 0]
    positions = list(itertools.product(*[range(s) for s in grid]))  # row-major, as the tokens
    return qr @ kr.T, positions


@pytest.mark.parametrize("grid", [(9,), (4, 5), (3, 3, 4)])
def test_dot_product_depends_only_on_position_difference(grid: tuple[int, ...]) -> None:
    dots, positions = _rotated_dots(grid)
    by_offset: dict[tuple[int, ...], list[float]] = {}
    for (i, pi), (j, pj) in itertools.product(enumerate(positions), repeat=2):
        by_offset.setdefault(tuple(a - b for a, b in zip(pi, pj)), []).append(dots[i, j].item())
    for values in by_offset.values():
        assert max(values) - min(values) < 1e-4
    # and it does depend on the difference along every axis
    zero = by_offset[(0,) * len(grid)][0]
    for axis in range(len(grid)):
        offset = tuple(1 if a == axis else 0 for a in range(len(grid)))
        assert abs(by_offset[offset][0] - zero) > 1e-3


def test_rope_is_a_rotation_and_identity_at_origin() -> None:
    x = torch.randn(2, 3, 20, 8)
    cos, sin = rope_angles((4, 5), 8)
    y = apply_rope(x, cos, sin)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.equal(y[:, :, 0], x[:, :, 0])  # position (0, 0)
    assert y.dtype == x.dtype and apply_rope(x.bfloat16(), cos, sin).dtype == torch.bfloat16


def test_sincos_crop_is_centered() -> None:
    table = sincos_2d_table(8, 6)[None]  # (1, 36, 8)
    crop = crop_sincos_table(table, 6, (2, 4))  # rows 2:4, cols 1:5
    full = table.reshape(6, 6, 8)
    assert torch.equal(crop.reshape(2, 4, 8), full[2:4, 1:5])
    assert torch.equal(crop_sincos_table(table, 6, (6, 6)), table)
    with pytest.raises(ValueError, match="axis W has 7 patches, more than the sincos position table's 6"):
        crop_sincos_table(table, 6, (2, 7))


def test_sincos_table_layout() -> None:
    t = sincos_2d_table(8, 4).reshape(4, 4, 8)
    # first half encodes the column, second half the row; position 0 -> sin 0, cos 1
    assert torch.equal(t[2, 0, :4], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert torch.equal(t[0, 3, 4:], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert torch.allclose(t[0, 3, :2], torch.tensor([3.0, 0.03]).sin())
