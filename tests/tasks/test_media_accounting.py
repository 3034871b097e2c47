"""The Task counter hooks of media tasks: bad items observed, stopped on, summed, checkpointed, reported."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mmflow.data.bad_items import BadDataError
from mmflow.tasks.media_accounting import MediaAccounting


class _Media(MediaAccounting):
    def __init__(self, max_bad_fraction: float = 0.5) -> None:
        self.recipe = SimpleNamespace(data=SimpleNamespace(max_bad_fraction=max_bad_fraction))


def _batch(n: int, bad: list[tuple[str, str]]) -> dict:
    requested = torch.arange(n)
    requested[: len(bad)] += 100  # the first len(bad) items were replaced
    return {"index": torch.arange(n), "requested": requested, "bad": bad}


def test_media_batches_are_counted_and_cached_batches_are_not():
    task = _Media()
    task.observe_batch(_batch(4, [("/d/a.png", "empty file: 0 bytes")]))
    task.observe_batch({"latent_mean": torch.zeros(4, 2)})  # a cached batch: nothing to count
    assert task.counters() == {"items_loaded": 4.0, "bad_items": 1.0}


def test_too_many_bad_items_stop_the_run():
    task = _Media(max_bad_fraction=0.1)
    with pytest.raises(BadDataError, match=r"data\.max_bad_fraction = 0\.1"):
        for k in range(30):
            task.observe_batch(_batch(4, [(f"/d/{k}.png", "decode error: truncated")]))


def test_report_sums_ranks_and_adds_dropped_rows():
    task = _Media()
    assert task.report({"items_loaded": 0.0, "bad_items": 0.0}).metrics == {}  # a cached run: no media loaded
    task.track_dropped(SimpleNamespace(dropped=[("../x.png", "outside folder: ../x.png")]))
    task.observe_batch(_batch(4, [("/d/a.png", "empty file: 0 bytes")]))
    alone = task.report(task.counters())
    assert alone.metrics == {"bad_items": 1, "items_loaded": 4, "dropped_rows": 1.0}
    assert "/d/a.png: empty file" in alone.text and "dropped rows: 1" in alone.text and "rank 0" not in alone.text
    both = task.report({"items_loaded": 8.0, "bad_items": 3.0})  # another rank counted too
    assert both.metrics["bad_items"] == 3 and both.metrics["dropped_rows"] == 1.0  # dropped: not summed
    assert "all ranks: 3 bad of 8 items asked for" in both.text


def test_counter_state_round_trips_and_old_checkpoints_load():
    task = _Media()
    task.observe_batch(_batch(4, [("/d/a.png", "empty file: 0 bytes")]))
    state = task.counters_state()
    for saved in (state, {"step": 3, **state}):  # older trainer_state.json kept "bad_items" at the top level
        back = _Media()
        back.load_counters_state(saved)
        assert back.counters() == task.counters() and back.bad_items.paths == task.bad_items.paths
    fresh = _Media()
    fresh.load_counters_state({"step": 3})  # older still: no counts at all
    assert fresh.counters() == {"items_loaded": 0.0, "bad_items": 0.0}
