import pytest
import torch

from mmflow.train.random import BatchRandom


def _draws(local, slots, seed=0, step=3):
    parts = []
    for slot in range(slots):
        r = BatchRandom(seed, step, 0, slot, local, slots)
        parts.append((r.randn(2), r.rand(), r.draw(lambda n, g: torch.randint(0, 10, (n,), generator=g))))
    return [torch.cat(p) for p in zip(*parts)]


def test_slots_partition_the_same_global_draws():
    whole = _draws(8, 1)
    for a, b in zip(whole, _draws(4, 2)):
        assert torch.equal(a, b)
    for a, b in zip(whole, _draws(2, 4)):
        assert torch.equal(a, b)


def test_steps_seeds_and_draws_differ():
    a = BatchRandom(0, 1, 0, 0, 4, 1)
    first, second = a.randn(3), a.randn(3)
    assert not torch.equal(first, second)
    assert not torch.equal(first, BatchRandom(0, 2, 0, 0, 4, 1).randn(3))
    assert not torch.equal(first, BatchRandom(1, 1, 0, 0, 4, 1).randn(3))
    assert not torch.equal(first, BatchRandom(0, 1, 1, 0, 4, 1).randn(3))
    assert torch.equal(first, BatchRandom(0, 1, 0, 0, 4, 1).randn(3))


def test_bad_slot_is_rejected():
    with pytest.raises(ValueError, match="slot"):
        BatchRandom(0, 0, 0, 2, 4, 2)
