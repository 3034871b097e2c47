"""Tests for mmflow/models/patchify.py: latents <-> tokens for audio, image and video."""

from __future__ import annotations

import pytest
import torch

from mmflow.models.patchify import check_latent, patchify, unpatchify


@pytest.mark.parametrize("shape,patch", [
    ((2, 3, 12), (4,)),                  # audio (B, C, L)
    ((2, 3, 8, 6), (2, 3)),              # image (B, C, H, W), non-square patch
    ((2, 5, 4, 6, 8), (1, 2, 4)),        # video (B, C, T, H, W)
    ((1, 2, 6, 4), (1, 1)),              # patch 1: one token per pixel
])
def test_round_trip_each_rank(shape: tuple[int, ...], patch: tuple[int, ...]) -> None:
    x = torch.randn(shape)
    tokens, grid = patchify(x, patch)
    n = 1
    for s, p in zip(shape[2:], patch):
        n *= s // p
    assert grid == tuple(s // p for s, p in zip(shape[2:], patch))
    assert tokens.shape == (shape[0], n, shape[1] * torch.tensor(patch).prod().item())
    assert torch.equal(unpatchify(tokens, grid, patch, shape[1]), x)


def test_token_layout_is_row_major_grid_and_channels_last() -> None:
    x = torch.randn(1, 3, 4, 6)
    tokens, grid = patchify(x, (2, 3))
    assert grid == (2, 2)
    # token 1 is grid cell (row 0, col 1): rows 0:2, cols 3:6, flattened (p1, p2, C)
    assert torch.equal(tokens[0, 1], x[0, :, 0:2, 3:6].permute(1, 2, 0).reshape(-1))
    assert torch.equal(tokens[0, 2], x[0, :, 2:4, 0:3].permute(1, 2, 0).reshape(-1))


def test_wrong_rank_names_both_ranks() -> None:
    with pytest.raises(ValueError, match=r"patch_size \(2, 2\) takes image latents .*got video latents"):
        patchify(torch.zeros(1, 4, 2, 8, 8), (2, 2))
    with pytest.raises(ValueError, match=r"takes audio latents .*got image latents"):
        check_latent(torch.zeros(1, 4, 8, 8), (2,))


def test_indivisible_axis_names_axis_size_and_patch() -> None:
    with pytest.raises(ValueError, match=r"axis W \(dim 3\) has size 7, not divisible by its patch size 2"):
        patchify(torch.zeros(1, 4, 8, 7), (2, 2))
    with pytest.raises(ValueError, match=r"axis T \(dim 2\) has size 3, not divisible by its patch size 2"):
        patchify(torch.zeros(1, 4, 3, 4, 4), (2, 2, 2))


def test_channel_and_patch_size_errors() -> None:
    with pytest.raises(ValueError, match=r"expected 4 latent channels \(dim 1\), got 3"):
        check_latent(torch.zeros(1, 3, 8, 8), (2, 2), channels=4)
    with pytest.raises(ValueError, match="1, 2 or 3 entries"):
        check_latent(torch.zeros(1, 3, 2, 2, 2, 2), (1, 1, 1, 1))
    with pytest.raises(ValueError, match="do not fit grid"):
        unpatchify(torch.zeros(1, 5, 12), (2, 2), (2, 2), 3)
