"""The Task run-counter hooks for tasks that train on media folders: bad media counted with a BadItemLog.

Each rank counts the bad items its own batches report (records travel inside batches, see
mmflow/data/bad_items.py) and stops the run past data.max_bad_fraction; the trainer sums the counts
over ranks into the final metrics bad_items / items_loaded (plus dropped_rows, the metadata rows the
dataset never made items, the same on every rank) and logs the summary paragraph on the main process.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from mmflow.data.bad_items import BadItemLog
from mmflow.train.task import CounterReport

D = TypeVar("D")


class MediaAccounting:
    """Mixin for a Task (put it first in the bases) whose batches are collated media_folder batches."""

    recipe: Any
    _bad_items: BadItemLog | None = None

    @property
    def bad_items(self) -> BadItemLog:
        """This rank's log of the run's bad media (made on first use)."""
        if self._bad_items is None:
            self._bad_items = BadItemLog()
        return self._bad_items

    def track_dropped(self, dataset: D) -> D:
        """`dataset`, after noting the metadata rows it dropped (its `dropped`, if any); call in build_dataset."""
        self.bad_items.dropped = []
        self.bad_items.add_dropped(getattr(dataset, "dropped", ()))
        return dataset

    def observe_batch(self, batch: Any) -> None:
        if isinstance(batch, Mapping) and "bad" in batch and "index" in batch:  # raw media, not a cache
            self.bad_items.update(batch)
            self.bad_items.check(self.recipe.data.max_bad_fraction)

    def counters(self) -> dict[str, float]:
        return {"items_loaded": float(self.bad_items.seen), "bad_items": float(self.bad_items.bad)}

    def counters_state(self) -> dict[str, Any]:
        return {"bad_items": self.bad_items.state_dict()}  # dropped rows are not kept: the next start indexes again

    def load_counters_state(self, state: dict[str, Any]) -> None:
        if "bad_items" in state:
            self.bad_items.load_state_dict(state["bad_items"])

    def report(self, totals: dict[str, float]) -> CounterReport:
        """No metrics when no media item was loaded (a cached run); else the totals and this rank's summary."""
        loaded, bad = int(totals["items_loaded"]), int(totals["bad_items"])
        if loaded == 0:
            return CounterReport()
        log = self.bad_items
        text = log.summary()
        if (loaded, bad) != (log.seen, log.bad):  # other ranks counted too
            text += f"\n(this is rank 0's list; all ranks: {bad} bad of {loaded} items asked for)"
        dropped = {"dropped_rows": float(len(log.dropped))} if log.dropped else {}  # the same on every rank
        return CounterReport({"bad_items": bad, "items_loaded": loaded, **dropped}, text)

    def summary_lines(self, metrics: dict[str, float | None], run_dir: Path) -> list[str]:
        """Bad media and dropped metadata rows, pointing at the run's train.log for the paths; then the task's own."""
        lines = []
        if metrics.get("bad_items"):
            lines.append(f"bad media: {int(metrics['bad_items'])} of {int(metrics['items_loaded'])} items asked for "
                         f"were bad and replaced (paths in {run_dir / 'train.log'})")
        if metrics.get("dropped_rows"):
            lines.append(f"dropped rows: {int(metrics['dropped_rows'])} metadata rows were not used as items "
                         f"(rows and reasons in {run_dir / 'train.log'})")
        return super().summary_lines(metrics, run_dir) + lines  # type: ignore[misc]  (the Task after this mixin)
