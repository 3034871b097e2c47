"""Bad media accounting: a bad file never stops a run and never goes unnoticed.

A reader that cannot use a file raises `BadMedia(kind, detail)`; the dataset catches it, substitutes
a deterministic replacement item and puts the record `(path, "kind: detail")` in the item's "bad"
list. Records travel inside batches because DataLoader workers are separate processes: the main
process sums them with `BadItemLog.update(batch)`, which logs each bad path once (logger
"mmflow.data") and counts them per kind, and `check(max_fraction)` stops a run whose data is mostly
broken with an error that names the files. A training task does this through the Task counter hooks
(mmflow/tasks/media_accounting.py), so the trainer itself knows nothing of media.

Reason kinds (the text before the first colon) used by the readers:
    "empty file", "missing file", "decode error", "not a media file", "too few frames",
    "no frames", "decode timeout", "silent audio", "non-finite audio", "non-text caption".

Metadata rows that never became items (a file_name outside the folder, absolute, of another
extension: see captions.py) are decided when the folder is indexed, not when an item loads. They are
the same records, (file_name, "kind: detail"), kept apart in `BadItemLog.dropped` because they are
not items and so not part of the bad fraction; `summary()` reports both, and `dropped_summary`
words the warning the dataset logs once when it indexes the folder. Kinds: "outside folder",
"absolute path", "other extension", "bad file name".
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from mmflow.errors import UserError

__all__ = ["BadDataError", "BadItemLog", "BadMedia", "BadRecord", "call_with_timeout", "check_file", "dropped_summary",
           "reason_kind"]

logger = logging.getLogger("mmflow.data")

BadRecord = tuple[str, str]  # (path, reason), reason = "kind: detail"
T = TypeVar("T")


class BadMedia(Exception):
    """One media item cannot be used. `reason` is "kind: detail", e.g. "too few frames: 5 < 8".

    `permanent=False` marks a verdict that depends on the crop (a silent stretch of a good recording),
    so the dataset does not remember the whole file as bad.
    """

    def __init__(self, kind: str, detail: str = "", permanent: bool = True) -> None:
        self.kind = kind
        self.detail = detail
        self.permanent = permanent
        super().__init__(self.reason)

    @property
    def reason(self) -> str:
        return f"{self.kind}: {self.detail}" if self.detail else self.kind

    def __reduce__(self):  # keep fields when raised inside a worker process
        return (type(self), (self.kind, self.detail, self.permanent))


class BadDataError(UserError, RuntimeError):
    """Too many media items were bad (or no replacement for a bad item could be found)."""


def reason_kind(reason: str) -> str:
    """"too few frames: 5 < 8" -> "too few frames" (the key of `BadItemLog.counts`)."""
    return reason.split(":", 1)[0].strip()


def _by_kind(records: Iterable[BadRecord]) -> str:
    return ", ".join(f"{k} {n}" for k, n in Counter(reason_kind(r) for _, r in records).most_common())


def _listed(records: list[BadRecord], limit: int) -> list[str]:
    lines = [f"  {p}: {r}" for p, r in records[:limit]]
    if len(records) > limit:
        lines.append(f"  ... and {len(records) - limit} more")
    return lines


def dropped_summary(records: list[BadRecord], limit: int = 10) -> str:
    """One paragraph on metadata rows that are not items: counts by reason kind, the first `limit` named."""
    head = f"dropped rows: {len(records)} metadata row(s) not used as items ({_by_kind(records)})"
    return "\n".join([head, *_listed(records, limit)])


def check_file(path: str | os.PathLike) -> int:
    """Size of `path` in bytes; `BadMedia` "missing file" or "empty file" when it has nothing to decode."""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise BadMedia("missing file") from None
    except OSError as exc:
        raise BadMedia("decode error", f"cannot read: {exc}") from None
    if size == 0:
        raise BadMedia("empty file", "0 bytes")
    return size


# --------------------------------------------------------------------------------------------------
# Abandonable calls
# --------------------------------------------------------------------------------------------------

_abandoned = 0  # decode threads left running after a timeout, in this process
_abandoned_lock = threading.Lock()
_local = threading.local()  # each calling thread has its own decode thread


class _DecodeThread:
    """A daemon thread running submitted calls one after another (cheaper than a thread per call)."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="mmflow-decode", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            fn, box, done = self.jobs.get()
            try:
                box["value"] = fn()
            except BaseException as exc:  # re-raised in the caller's thread
                box["error"] = exc
            done.set()


def call_with_timeout(fn: Callable[[], T], timeout_s: float | None, path: str = "") -> T:
    """Run `fn()` and return its result, or raise `BadMedia("decode timeout")` after `timeout_s` seconds.

    The call runs on a helper daemon thread that the caller stops waiting for; a helper stuck
    with a hung call is left behind and the next call gets a new one. Trade-off, chosen over a
    subprocess per item: handing a call to a thread costs microseconds and frames need no copy
    between processes, but a thread cannot be killed, so a decode that truly hangs keeps its thread
    (and maybe a core) busy until the process ends; the dataset remembers the path as bad so it is
    never decoded again in this process. It works because the decoders release the GIL while in
    native code (decord calls through ctypes.CDLL, PyAV/libav and libsndfile likewise); a native
    hang that held the GIL would freeze the waiting thread too, and only a subprocess could recover
    from that. `timeout_s` None or <= 0 calls `fn` inline.
    """
    if timeout_s is None or timeout_s <= 0:
        return fn()
    worker = getattr(_local, "worker", None)
    if worker is None or not worker.thread.is_alive():  # first call, or a forked child (threads do not survive fork)
        worker = _local.worker = _DecodeThread()
    box: dict[str, Any] = {}
    done = threading.Event()
    worker.jobs.put((fn, box, done))
    if not done.wait(timeout_s):
        _local.worker = None  # it is busy with the hung call for good
        global _abandoned
        with _abandoned_lock:
            _abandoned += 1
            n = _abandoned
        logger.warning("decode of %s passed %g s and was abandoned (%d abandoned decode thread(s) in this "
                       "process; raise data.decode_timeout_s if your files are just slow)", path, timeout_s, n)
        raise BadMedia("decode timeout", f"> {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


# --------------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------------


class BadItemLog:
    """Counts of bad media over a run, summed from batches in the main process.

    `seen` counts the items asked for and `bad` those of them whose own file was bad (and were
    replaced), so `fraction` estimates the share of the data that is broken. `paths` holds every
    bad file met (replacement candidates that failed too) with its first reason; `counts` is the
    number of distinct bad paths per reason kind. `dropped` holds the metadata rows the dataset never
    made items (`add_dropped`); they are reported but not counted in `fraction`, and not checkpointed
    (the next start indexes the folder again).
    """

    def __init__(self, key: str = "data.max_bad_fraction", log: bool = True) -> None:
        self.key = key  # the config key named by check()'s error
        self.log = log
        self.seen = 0
        self.bad = 0
        self.paths: dict[str, str] = {}  # path -> first reason, in the order first seen
        self.dropped: list[BadRecord] = []  # metadata rows that are not items (one record a row)

    # ------------------------------------------------------------------ adding
    def add(self, seen: int, bad: int, records: Iterable[BadRecord]) -> list[BadRecord]:
        """Add `seen` items asked for, `bad` of them bad, and the bad records; returns the records of new paths."""
        new: list[BadRecord] = []
        self.seen += int(seen)
        self.bad += int(bad)
        for path, reason in records:
            if path not in self.paths:
                self.paths[path] = reason
                new.append((path, reason))
                if self.log:
                    logger.warning("skipped bad media %s (%s)", path, reason)
        return new

    def add_dropped(self, records: Iterable[BadRecord]) -> None:
        """Record the dataset's dropped metadata rows (not logged here: the dataset warned when it indexed them)."""
        self.dropped.extend((str(p), str(r)) for p, r in records)

    def update(self, batch: Mapping[str, Any]) -> list[BadRecord]:
        """Add a collated batch (see media_folder.collate): size from "index", bad items where
        "requested" differs from the "index" delivered, records from "bad"."""
        index = batch["index"]
        records = list(batch.get("bad", ()))
        requested = batch.get("requested")
        bad = int((requested != index).sum()) if requested is not None else len(records)
        return self.add(len(index), bad, records)

    def merge(self, other: BadItemLog) -> None:
        """Add another log's totals (e.g. gathered from another rank); paths keep their first reason."""
        self.seen += other.seen
        self.bad += other.bad
        for path, reason in other.paths.items():
            self.paths.setdefault(path, reason)
        if not self.dropped:  # every rank indexes the same folder, so the lists are equal
            self.dropped = list(other.dropped)

    # ------------------------------------------------------------------ reading
    @property
    def fraction(self) -> float:
        return self.bad / self.seen if self.seen else 0.0

    @property
    def counts(self) -> dict[str, int]:
        """Distinct bad paths per reason kind, most frequent first."""
        return dict(Counter(reason_kind(r) for r in self.paths.values()).most_common())

    def examples(self, n: int = 5) -> list[BadRecord]:
        return list(self.paths.items())[:n]

    def summary(self) -> str:
        """One paragraph for the end of a run or of `mmflow prepare` (dropped rows, if any, in a second)."""
        if not self.paths:
            lines = [f"bad media: none ({self.seen} items loaded)"]
        else:
            kinds = ", ".join(f"{k} {n}" for k, n in self.counts.items())
            lines = [f"bad media: {len(self.paths)} distinct files skipped ({kinds}); {self.bad} of {self.seen} "
                     f"items asked for ({100 * self.fraction:.2f}%) were bad and replaced",
                     *_listed(list(self.paths.items()), 10)]
        if self.dropped:
            lines.append(dropped_summary(self.dropped))
        return "\n".join(lines)

    def check(self, max_fraction: float, min_seen: int = 100) -> None:
        """Raise `BadDataError` when more than `max_fraction` of at least `min_seen` items were bad."""
        if self.seen < min_seen or self.fraction <= max_fraction:
            return
        first = "; ".join(f"{p} ({r})" for p, r in self.examples(5))
        kinds = ", ".join(f"{k} {n}" for k, n in self.counts.items())
        raise BadDataError(
            f"{100 * self.fraction:.1f}% of media items were bad ({self.bad} of {self.seen}), more than "
            f"{self.key} = {max_fraction:g}; bad files by reason: {kinds}; first bad files: {first}. "
            f"Fix or remove these files (`mmflow prepare` lists them all), or raise {self.key}."
        )

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"seen": self.seen, "bad": self.bad, "paths": dict(self.paths)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.seen = int(state["seen"])
        self.bad = int(state["bad"])
        self.paths = dict(state["paths"])
