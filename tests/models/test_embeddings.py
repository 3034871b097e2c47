"""Tests for mmflow/models/embeddings.py: sinusoidal features, timestep MLP, label embedder with a null class."""

from __future__ import annotations

import math

import pytest
import torch

from mmflow.models.embeddings import LabelEmbedder, TimestepEmbedder, timestep_embedding


def test_timestep_embedding_at_t0_is_cos1_sin0() -> None:
    emb = timestep_embedding(torch.zeros(3), 8)  # (3, 8): 4 cos then 4 sin
    assert emb.shape == (3, 8)
    torch.testing.assert_close(emb[:, :4], torch.ones(3, 4))
    torch.testing.assert_close(emb[:, 4:], torch.zeros(3, 4))


def test_timestep_embedding_matches_formula() -> None:
    t = torch.tensor([0.0, 0.25, 1.0])
    dim, max_period, scale = 6, 10000.0, 1000.0
    emb = timestep_embedding(t, dim, max_period=max_period, scale=scale)
    half = dim // 2
    for i in range(half):
        freq = math.exp(-math.log(max_period) * i / half)
        for b, tb in enumerate(t.tolist()):
            assert emb[b, i].item() == pytest.approx(math.cos(scale * tb * freq), abs=1e-4)
            assert emb[b, half + i].item() == pytest.approx(math.sin(scale * tb * freq), abs=1e-4)
    # cos^2 + sin^2 = 1 per frequency
    torch.testing.assert_close(emb[:, :half] ** 2 + emb[:, half:] ** 2, torch.ones(3, half))


def test_timestep_embedding_odd_dim_is_zero_padded() -> None:
    t = torch.tensor([0.0, 0.3, 0.9])
    odd = timestep_embedding(t, 7)
    even = timestep_embedding(t, 6)
    assert odd.shape == (3, 7)
    torch.testing.assert_close(odd[:, :6], even)
    torch.testing.assert_close(odd[:, 6], torch.zeros(3))


def test_timestep_embedding_distinguishes_times() -> None:
    emb = timestep_embedding(torch.tensor([0.1, 0.1001, 0.5]), 64)
    assert not torch.allclose(emb[0], emb[1])  # 1000x scaling resolves small differences in t
    assert not torch.allclose(emb[0], emb[2])


def test_timestep_embedder_shape_and_dependence_on_t() -> None:
    torch.manual_seed(0)
    emb = TimestepEmbedder(hidden=16, frequency_dim=8)
    out = emb(torch.tensor([0.0, 0.5, 1.0]))
    assert out.shape == (3, 16)
    assert not torch.allclose(out[0], out[1])


def test_label_embedder_null_label_and_lookup() -> None:
    torch.manual_seed(0)
    emb = LabelEmbedder(num_classes=3, hidden=5)
    assert emb.null_label == 3
    labels = torch.tensor([0, 1, 2, 3])
    out = emb(labels)
    assert out.shape == (4, 5)
    torch.testing.assert_close(out, emb.table.weight[labels])
    assert not torch.allclose(out[3], out[0])  # the null label has its own row


@pytest.mark.parametrize("bad", [[-1], [4], [0, 7]])
def test_label_embedder_out_of_range_raises(bad: list[int]) -> None:
    emb = LabelEmbedder(num_classes=3, hidden=5)
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        emb(torch.tensor(bad))


def test_label_embedder_float_labels_raise() -> None:
    emb = LabelEmbedder(num_classes=3, hidden=5)
    with pytest.raises(TypeError, match="integer"):
        emb(torch.tensor([0.0, 1.0]))


def test_label_embedder_empty_batch() -> None:
    emb = LabelEmbedder(num_classes=3, hidden=5)
    assert emb(torch.zeros(0, dtype=torch.long)).shape == (0, 5)
