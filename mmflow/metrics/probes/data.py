"""A labelled media folder (metadata.jsonl + files) as arrays, split into fit / held-out by file name.

The split is a pure function of each item's `file_name` (sha256), so it is the same on every
machine, for any subset of the folder and whatever order its lines are in. Decoding 600 clips
takes a while, so the decoded arrays are cached (safetensors, keyed by the folder's metadata and
file sizes) under a cache folder; tests and the CI check pass `cache=None`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from mmflow.errors import MissingInput, UserError

__all__ = ["HELD_OUT_FRACTION", "LabelledSet", "MissingLabel", "is_held_out", "load_labelled_folder", "read_metadata"]

HELD_OUT_FRACTION = 0.2
DEFAULT_CACHE = Path(os.environ.get("MMFLOW_PROBE_CACHE", "/tmp/mmflow-probe-cache"))


class MissingLabel(UserError, KeyError):
    """A metadata.jsonl line without a field the probe is trained on."""


def is_held_out(file_name: str, fraction: float = HELD_OUT_FRACTION) -> bool:
    """True for the ~`fraction` of file names whose sha256 (first 8 bytes, as a number in [0, 1)) is below it."""
    h = int.from_bytes(hashlib.sha256(file_name.encode()).digest()[:8], "big")
    return h / 2.0**64 < fraction


@dataclass
class LabelledSet:
    """media (N, ...) float in [-1, 1]; labels[attr] (N,) long; names: each item's file_name."""

    media: Tensor
    labels: dict[str, Tensor]
    names: list[str]
    rows: list[dict]  # the metadata lines, in the same order

    def subset(self, keep: Sequence[bool]) -> LabelledSet:
        idx = torch.tensor([i for i, k in enumerate(keep) if k], dtype=torch.long)
        return LabelledSet(self.media[idx], {a: y[idx] for a, y in self.labels.items()},
                           [self.names[i] for i in idx.tolist()], [self.rows[i] for i in idx.tolist()])

    def split(self, fraction: float = HELD_OUT_FRACTION) -> tuple[LabelledSet, LabelledSet]:
        """(fit, held-out) by `is_held_out` of the file names."""
        held = [is_held_out(n, fraction) for n in self.names]
        return self.subset([not h for h in held]), self.subset(held)


def read_metadata(folder: Path) -> list[dict]:
    """The lines of folder/metadata.jsonl, sorted by file_name."""
    meta = folder / "metadata.jsonl"
    if not meta.is_file():
        raise MissingInput(f"{meta}: missing (a labelled folder holds metadata.jsonl with file_name and labels)")
    rows = [json.loads(line) for line in meta.read_text().splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r["file_name"])


def _cache_key(folder: Path, rows: list[dict], tag: str) -> str:
    h = hashlib.sha256(tag.encode())
    for r in rows:
        h.update(json.dumps(r, sort_keys=True).encode())
        h.update(str((folder / r["file_name"]).stat().st_size).encode())
    return h.hexdigest()[:16]


def load_labelled_folder(folder: str | os.PathLike, attributes: dict[str, Callable[[dict], int]],
                         read: Callable[[Path], Tensor], tag: str, cache: Path | None = DEFAULT_CACHE,
                         limit: int | None = None, only: Callable[[str], bool] | None = None) -> LabelledSet:
    """Decode every item of a labelled folder: `read(path) -> (...)` per file, `attributes[attr](row) -> index`.

    `tag` names the decoding (it is part of the cache key); `only(file_name)` keeps a subset and
    `limit` the first `limit` of it (both before decoding).
    """
    folder = Path(folder)
    rows = read_metadata(folder)
    if only is not None:
        rows = [r for r in rows if only(r["file_name"])]
    rows = rows[:limit] if limit is not None else rows
    labels: dict[str, Tensor] = {}
    for attr, encode in attributes.items():
        try:
            labels[attr] = torch.tensor([encode(r) for r in rows], dtype=torch.long)
        except KeyError as e:
            raise MissingLabel(f"{folder / 'metadata.jsonl'}: a line lacks {e} (needed for {attr!r})") from None
    names = [r["file_name"] for r in rows]
    path = cache / f"{tag}-{_cache_key(folder, rows, tag)}.safetensors" if cache is not None else None
    if path is not None and path.is_file():
        media = load_file(str(path))["media"].float()
    else:
        media = torch.stack([read(folder / n) for n in names])  # (N, ...)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            save_file({"media": media.half()}, str(tmp))  # half: 600 clips at 64x64x16 fit in ~200 MB
            tmp.replace(path)
    return LabelledSet(media, labels, names, rows)
