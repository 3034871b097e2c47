"""Condition dropout for CFG training: mask statistics and row replacement for tensors and dicts."""

import pytest
import torch

from mmflow.flow.cfg import apply_condition_dropout, broadcast_null, condition_dropout_mask, take_rows


def test_mask_rate_and_extremes():
    g = torch.Generator().manual_seed(0)
    mask = condition_dropout_mask(100_000, 0.1, generator=g)
    assert mask.dtype == torch.bool and mask.shape == (100_000,)
    assert mask.float().mean().item() == pytest.approx(0.1, abs=0.005)
    assert not condition_dropout_mask(1000, 0.0).any()
    assert condition_dropout_mask(1000, 1.0).all()
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            condition_dropout_mask(4, bad)


def test_tensor_rows_replaced_exactly_where_mask():
    cond = torch.arange(24.0).view(4, 3, 2)
    null = torch.full((3, 2), -1.0)  # no batch dim
    mask = torch.tensor([True, False, False, True])
    out = apply_condition_dropout(cond, null, mask)
    assert out.shape == cond.shape
    assert (out[mask] == -1).all()
    torch.testing.assert_close(out[~mask], cond[~mask])
    # batch-1 null gives the same result
    torch.testing.assert_close(apply_condition_dropout(cond, null[None], mask), out)


def test_dict_condition_with_bool_mask_and_labels():
    cond = {
        "tokens": torch.randn(3, 5, 8),
        "mask": torch.ones(3, 5, dtype=torch.bool),
        "label": torch.tensor([2, 7, 4]),
    }
    null = {
        "tokens": torch.zeros(1, 5, 8),
        "mask": torch.zeros(5, dtype=torch.bool),
        "label": torch.tensor(-1),
    }
    mask = torch.tensor([False, True, False])
    out = apply_condition_dropout(cond, null, mask)
    assert set(out) == set(cond)
    assert out["label"].tolist() == [2, -1, 4]
    assert out["mask"].tolist() == [[True] * 5, [False] * 5, [True] * 5]
    assert (out["tokens"][1] == 0).all()
    torch.testing.assert_close(out["tokens"][[0, 2]], cond["tokens"][[0, 2]])
    assert out["label"].dtype == torch.long and out["mask"].dtype == torch.bool


def test_shape_and_structure_errors():
    cond = torch.randn(4, 3)
    with pytest.raises(ValueError):
        apply_condition_dropout(cond, torch.zeros(2), torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError):
        apply_condition_dropout(cond, torch.zeros(3), torch.zeros(5, dtype=torch.bool))
    no_drop = torch.zeros(4, dtype=torch.bool)
    with pytest.raises(KeyError):
        apply_condition_dropout({"a": cond, "b": cond}, {"a": torch.zeros(3)}, no_drop)
    with pytest.raises(TypeError):
        broadcast_null(torch.zeros(3), {"a": cond})


def test_take_rows_keeps_the_structure_and_the_order():
    cond = {"text": torch.arange(12.0).view(3, 2, 2), "mask": torch.tensor([[True, False], [True, True], [False, False]])}
    rows = torch.tensor([2, 0])
    got = take_rows(cond, rows)
    assert set(got) == {"text", "mask"}
    torch.testing.assert_close(got["text"], cond["text"][[2, 0]])
    assert got["mask"].tolist() == [[False, False], [True, False]]
    torch.testing.assert_close(take_rows(torch.tensor([5, 6, 7]), rows), torch.tensor([7, 5]))
    assert take_rows({}, rows) == {}
    with pytest.raises(ValueError, match="disagree on the batch size"):
        take_rows({"a": torch.zeros(3, 1), "b": torch.zeros(2, 1)}, rows)
    with pytest.raises(TypeError, match="Tensor or a dict"):
        take_rows([torch.zeros(3)], rows)  # type: ignore[arg-type]
