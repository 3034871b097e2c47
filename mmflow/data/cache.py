"""A cache of precomputed training inputs (tokenizer latents, text embeddings) in sharded safetensors.

Folder layout:

    index.json                          what was cached, from what (describe + fingerprint), item -> shard
    shard-r<rank>-<k>.safetensors       tensors named "<item>/<field>", e.g. "17/latent_mean"

`describe` is a JSON mapping of everything the cached values depend on (the tokenizer's and text
encoder's fingerprints, the preprocessing settings, the list of media files with sizes and mtimes);
the fingerprint is its hash. A reader compares fingerprints and, when they differ, names the keys of
`describe` that changed, so "stale" always comes with a reason. Keys the writer found the items do not
depend on (`CacheWriter.independent_of`: the seed where no item's read drew from it) are left out of both
sides ("independent_of" in index.json).

Writing is atomic and data-parallel: every rank writes its own shards into one temporary folder, then
rank 0 merges the per-rank manifests into index.json and renames the folder into place. A crash at
any point leaves the previous cache (or none), never a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import Dataset

from mmflow.errors import UserError
from mmflow.utils.fs import fsync_dir, write_json_atomic

INDEX_NAME = "index.json"
FORMAT_VERSION = 1
DEFAULT_SHARD_BYTES = 256 * 1024**2


class StaleCacheError(UserError, RuntimeError):
    """The cache on disk was built from other inputs than the recipe asks for (or is missing/partial)."""


def fingerprint_of(describe: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of `describe` (key order does not matter)."""
    return hashlib.sha256(json.dumps(describe, sort_keys=True, default=str).encode()).hexdigest()


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two describe mappings."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            out += _changed_keys(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".") or "(root)"]


def _tmp_folder(folder: Path) -> Path:
    return folder.with_name(f".tmp-{folder.name}")


@dataclass
class CacheWriter:
    """Writes one rank's items; `finalize` (rank 0, after every rank called `close`) publishes the cache.

    Usage on every rank: writer = CacheWriter(folder, describe, rank, world); writer.begin() (rank 0
    first, then a barrier); writer.add(i, {...}) for this rank's items; writer.close(); barrier;
    rank 0: writer.finalize().
    """

    folder: Path
    describe: dict[str, Any]
    rank: int = 0
    world_size: int = 1
    shard_bytes: int = DEFAULT_SHARD_BYTES
    _pending: dict[str, Tensor] = field(default_factory=dict, init=False)
    _pending_bytes: int = field(default=0, init=False)
    _items: dict[str, str] = field(default_factory=dict, init=False)
    _fields: dict[str, list[str]] = field(default_factory=dict, init=False)
    _skipped: list[list[str]] = field(default_factory=list, init=False)
    _shards: int = field(default=0, init=False)
    _independent: list[str] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self.tmp = _tmp_folder(self.folder)

    def begin(self) -> None:
        """Rank 0 only: a clean temporary folder (leftovers of a crashed prepare are removed)."""
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)

    def add(self, item: int, tensors: dict[str, Tensor]) -> None:
        """Cache the tensors of dataset item `item` (names must not contain '/')."""
        if str(item) in self._items or any(k.startswith(f"{item}/") for k in self._pending):
            raise ValueError(f"cache item {item} was added twice")
        for name, t in tensors.items():
            if "/" in name:
                raise ValueError(f"cache field name {name!r} must not contain '/'")
            t = t.detach().cpu().contiguous()
            self._pending[f"{item}/{name}"] = t
            self._pending_bytes += t.numel() * t.element_size()
            self._fields.setdefault(name, [str(t.dtype).replace("torch.", ""), str(t.ndim)])
        self._items[str(item)] = ""  # shard name filled in when the shard is written
        if self._pending_bytes >= self.shard_bytes:
            self._flush()

    def add_skipped(self, path: str, reason: str) -> None:
        self._skipped.append([path, reason])

    def independent_of(self, keys: list[str]) -> None:
        """Top-level `describe` keys this rank's items turned out not to depend on (a seed no read drew from).
        Keys every rank names are left out of the published description, so the cache holds whatever their
        values; ranks that never call this name none."""
        self._independent = list(keys)

    def _flush(self) -> None:
        if not self._pending:
            return
        name = f"shard-r{self.rank:03d}-{self._shards:05d}.safetensors"
        save_file(self._pending, str(self.tmp / name), metadata={"format": "pt"})
        for key in self._pending:
            self._items[key.split("/", 1)[0]] = name
        self._pending, self._pending_bytes = {}, 0
        self._shards += 1

    def close(self) -> None:
        """Write this rank's last shard and its manifest (every rank)."""
        self._flush()
        write_json_atomic(self.tmp / f"rank-{self.rank:03d}.json",
                          {"items": self._items, "fields": self._fields, "skipped": self._skipped,
                           "independent": self._independent or []})

    def finalize(self) -> Path:
        """Rank 0: merge the rank manifests into index.json and move the cache into place."""
        items: dict[str, str] = {}
        fields: dict[str, list[str]] = {}
        skipped: list[list[str]] = []
        independent = set(self.describe)
        for r in range(self.world_size):
            path = self.tmp / f"rank-{r:03d}.json"
            if not path.exists():
                raise StaleCacheError(f"{path} is missing: rank {r} did not finish writing the cache")
            part = json.loads(path.read_text())
            items.update(part["items"])
            fields.update(part["fields"])
            skipped += part["skipped"]
            independent &= set(part.get("independent", []))
            path.unlink()
        describe = _without(self.describe, independent)
        index = {"format": FORMAT_VERSION, "fingerprint": fingerprint_of(describe), "describe": describe,
                 "independent_of": sorted(independent),
                 "num_items": len(items), "fields": fields, "items": dict(sorted(items.items(), key=lambda kv: int(kv[0]))),
                 "skipped": skipped}
        write_json_atomic(self.tmp / INDEX_NAME, index)  # written last: a folder without it is partial
        for f in self.tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if self.folder.exists():
            old = self.folder.with_name(f".old-{self.folder.name}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.folder, old)
            os.replace(self.tmp, self.folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.folder)
        fsync_dir(self.folder.parent)
        return self.folder


def _without(describe: dict[str, Any], keys: Any) -> dict[str, Any]:
    return {k: v for k, v in describe.items() if k not in keys}


def read_index(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The cache's index.json, or None when the folder holds no finished cache."""
    path = Path(folder) / INDEX_NAME
    if not path.exists():
        return None
    return json.loads(path.read_text())


def cache_problem(folder: str | os.PathLike, describe: dict[str, Any]) -> str | None:
    """None when the cache in `folder` was built from exactly `describe` (less the keys its items turned out
    not to depend on: the index's "independent_of"); otherwise why it is unusable."""
    index = read_index(folder)
    if index is None:
        return f"no cache in {folder} (no {INDEX_NAME}; run `mmflow prepare` first)"
    if index.get("format") != FORMAT_VERSION:
        return f"{folder}: cache format {index.get('format')} is not {FORMAT_VERSION}; rebuild it"
    describe = _without(describe, index.get("independent_of", []))
    if index["fingerprint"] != fingerprint_of(describe):
        changed = _changed_keys(index.get("describe", {}), describe)
        shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
        return f"{folder}: cache is stale, built from other inputs (changed: {shown})"
    return None


class CachedDataset(Dataset):
    """Map-style dataset over a finished cache: item k -> {field: Tensor, "index": dataset index}.

    Refuses a stale cache (StaleCacheError naming what changed) when `describe` is given. Shards are
    opened lazily (memory-mapped) in each DataLoader worker, so the dataset pickles cheaply.
    """

    def __init__(self, folder: str | os.PathLike, describe: dict[str, Any] | None = None,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        self.folder = Path(folder)
        problem = cache_problem(self.folder, describe) if describe is not None else None
        index = read_index(self.folder)
        if problem or index is None:
            raise StaleCacheError(problem or f"no cache in {self.folder}")
        self.index = index
        self.keys = list(index["items"])  # dataset indices (as strings), ascending
        self.fields = list(index["fields"])
        self.transform = transform
        self._handles: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": {}}  # open file handles do not cross process boundaries

    def _shard(self, name: str) -> Any:
        if name not in self._handles:
            self._handles[name] = safe_open(str(self.folder / name), framework="pt")
        return self._handles[name]

    def __getitem__(self, k: int) -> dict[str, Any]:
        key = self.keys[k]
        shard = self._shard(self.index["items"][key])
        item: dict[str, Any] = {f: shard.get_tensor(f"{key}/{f}") for f in self.fields}
        item["index"] = int(key)
        return self.transform(item) if self.transform else item


class CacheOrder:
    """A raw media batch sampler's batches as positions in a cache (which lacks the bad items).

    (index, epoch) keys become the cache position of `index`, or of the next cached index after it
    when `index` was bad (the raw dataset substitutes the same way, in its unbucketed order).
    """

    def __init__(self, raw_sampler: Any, cached: list[int], num_items: int) -> None:
        self.raw = raw_sampler
        position = {index: k for k, index in enumerate(cached)}
        self.lookup: list[int] = []
        for index in range(num_items):
            j = next((index + d) % num_items for d in range(num_items) if (index + d) % num_items in position)
            self.lookup.append(position[j])

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.raw:
            yield [self.lookup[key[0] if isinstance(key, (tuple, list)) else key] for key in batch]
