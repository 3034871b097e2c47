"""A folder of the user's images, videos or audio with captions, as a map-style torch Dataset.

    cfg = MediaFolderConfig(path="data/pets", modality="image", size=256)
    ds = MediaFolderDataset(cfg, seed=0)
    loader = DataLoader(ds, batch_size=8, collate_fn=collate, num_workers=4)
    log = BadItemLog()
    for batch in loader:            # batch["media"] (B, 3, H, W), batch["text"] list of B str
        log.update(batch)           # bad files skipped in this batch: counted, logged once per path
        log.check(cfg.max_bad_fraction)

Item keys: `i` or `(i, epoch)`; item i at epoch e is the same tensor whatever the worker count,
because its random crop / clip start come from a generator seeded by (seed, i, e), never from
global RNG (`BucketBatchSampler` yields (i, epoch) keys; plain int keys use `set_epoch`'s epoch).
A bad item (see bad_items.py) is replaced by the next one that loads, preferring its own bucket, and
read at the requested item's size, so every batch keeps its size and shape on every rank; the
skipped (path, reason) pairs ride along in the item's "bad" list. Files are opened per item inside
the worker, so the dataset pickles cheaply into DataLoader workers. Metadata rows that cannot be items
(outside the folder, absolute, another extension: see captions.py) are never items; they are in
`dataset.dropped`, warned about once here, and counted in the run's summary via
`BadItemLog.add_dropped`.
"""

from __future__ import annotations

import bisect
import itertools
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mmflow.config import check
from mmflow.data.bad_items import (BadDataError, BadItemLog, BadMedia, BadRecord, call_with_timeout, dropped_summary,
                                   reason_kind)
from mmflow.data.buckets import BucketBatchSampler, assign_bucket, make_buckets
from mmflow.data.captions import CaptionMode, MediaEntry, load_captions
from mmflow.data.video_reader import VideoBackend, clip_offsets, count_packets
from mmflow.errors import MissingInput, UserError
from mmflow.modalities import MODALITIES, Modality, get_modality
from mmflow.utils.seeding import mix_seed

__all__ = ["EmptyMediaFolder", "MediaFolderConfig", "MediaFolderDataset", "collate",
           "item_generator", "scan"]

logger = logging.getLogger("mmflow.data")

EXTRA_FIELDS = ("mask", "timing")  # per-item tensors a modality's read may add (audio), stacked by collate
MAX_CANDIDATES = 100  # a bad item and this many replacements all bad: the data is broken, stop


@dataclass
class MediaFolderConfig:
    """Where the media are and how to turn them into tensors (the `data` section of a media recipe)."""

    path: str = field(metadata={"exists": "dir", "help": "folder of media files (searched recursively) and captions"})
    modality: Literal["image", "video", "audio"] = field(  # the names in mmflow.modalities.MODALITIES
        default="image", metadata={"help": "kind of media: image | video | audio"})
    captions: CaptionMode = field(default="auto", metadata={"help": "auto: metadata.jsonl > metadata.csv > .txt sidecars > none"})
    text_field: str = field(default="text", metadata={"help": "caption key in metadata.jsonl / .csv rows"})
    extensions: list[str] = field(default_factory=list, metadata={"help": "file extensions; empty: the modality's usual ones"})
    # image / video frames
    size: int = field(default=256, metadata={"min": 8, "help": "output side (square), or the bucket side when bucketing"})
    crop: Literal["center", "random", "start"] | None = field(
        default=None, metadata={"help": "image/video: center | random; audio: random | start; null: the first of these"})
    bucketing: bool = field(default=False, metadata={"help": "aspect-ratio buckets of ~size**2 pixels (image, video)"})
    bucket_multiple: int = field(default=16, metadata={"min": 1, "help": "bucket sides are multiples of this (VAE x patch)"})
    bucket_min_aspect: float = field(default=0.5, metadata={"min": 0, "min_exclusive": True, "max": 1, "help": "narrowest W/H"})
    bucket_max_aspect: float = field(default=2.0, metadata={"min": 1, "help": "widest W/H"})
    # video
    frames: int = field(default=16, metadata={"min": 1, "help": "frames per clip"})
    frame_buckets: list[int] = field(default_factory=list, metadata={
        "min": 1, "help": "duration buckets: clip lengths to train on, each clip at the longest its source "
                          "fills (one length per batch); empty: data.frames only"})
    stride: int = field(default=1, metadata={"min": 1, "help": "source frames between clip frames (when fps is null)"})
    fps: float | None = field(default=None, metadata={"min": 0, "min_exclusive": True, "help": "sample clips at this frame rate instead of by stride"})
    clip_start: Literal["random", "start"] = field(default="random", metadata={"help": "first frame: random offset or frame 0"})
    short_clips: Literal["skip", "loop"] = field(default="skip", metadata={"help": "clips shorter than asked: skip (bad item) or loop"})
    video_backend: Literal["auto", "decord", "pyav", "torchcodec"] = field(
        default="auto", metadata={"help": "auto: decord, PyAV for files decord cannot read"})
    verify_frame_count: bool = field(default=True, metadata={"help": "clamp reported frame counts to the packets really present"})
    decode_timeout_s: float | None = field(default=60.0, metadata={"min": 0, "min_exclusive": True, "help": "abandon an item's decode after this long (null: never)"})
    # audio
    sample_rate: int = field(default=16000, metadata={"min": 1, "help": "audio is resampled to this rate (Hz)"})
    seconds: float = field(default=4.0, metadata={"min": 0, "min_exclusive": True, "help": "audio clip length; shorter audio is zero-padded (mask)"})
    channels: Literal[1, 2] = field(default=1, metadata={"help": "1: mono (mean), 2: stereo (mono duplicated)"})
    silence_threshold: float = field(default=1e-4, metadata={"min": 0, "help": "a clip whose peak is at or below this is bad"})
    # bad media
    max_bad_fraction: float = field(default=0.01, metadata={"min": 0, "max": 1, "help": "stop when more of the loaded files are bad"})

    def validate(self) -> None:
        check(self.path.strip() != "", "path", "must name the media folder")
        check(all(isinstance(e, str) and e.strip(". ") for e in self.extensions), "extensions",
              f"must be non-empty extensions like 'png', got {self.extensions!r}")
        check(self.modality in MODALITIES, "modality", f"{self.modality!r} is not one of {sorted(MODALITIES)}")
        spec = self.spec
        if self.crop is not None:
            check(self.crop in spec.crops, "crop", f"{self.crop!r} is not a {self.modality} crop; expected one of {spec.crops}")
        check(not (self.fps is not None and self.stride != 1), "fps", "set either fps or stride (stride must stay 1 with fps)")
        check(not (self.bucketing and not spec.spatial), "bucketing",
              f"aspect-ratio buckets are for {' and '.join(n for n, m in MODALITIES.items() if m.spatial)}")
        if self.bucketing:
            check(self.size >= self.bucket_multiple, "bucket_multiple", f"{self.bucket_multiple} exceeds size {self.size}")
        if self.frame_buckets:
            check(self.modality == "video", "frame_buckets", f"duration buckets are for video, not {self.modality}")
            check(len(set(self.frame_buckets)) == len(self.frame_buckets), "frame_buckets",
                  f"lists a length twice: {self.frame_buckets}")

    @property
    def spec(self) -> Modality:
        """The modality's spec (mmflow.modalities): everything that differs between image, video and audio."""
        return get_modality(self.modality)

    @property
    def crop_mode(self) -> str:
        return self.crop or self.spec.default_crop

    @property
    def reads_randomly(self) -> bool:
        """Whether reading an item draws from its generator (a random crop, a video's random first frame),
        so that what is read, and what a cache freezes, depends on the recipe's seed."""
        return self.crop_mode == "random" or (self.modality == "video" and self.clip_start == "random")

    @property
    def media_extensions(self) -> tuple[str, ...]:
        return tuple(e.lower().strip(". ") for e in self.extensions) or self.spec.extensions


class EmptyMediaFolder(UserError, ValueError):
    """The media folder holds no item of the recipe's modality."""


def item_generator(seed: int, index: int, epoch: int) -> torch.Generator:
    """The generator of item `index`'s random choices at `epoch` (crop, clip start): no global RNG."""
    return torch.Generator().manual_seed(mix_seed(seed, 0x17E4, index, epoch))


def _split_reason(reason: str) -> BadMedia:
    kind, _, detail = reason.partition(":")
    return BadMedia(kind.strip(), detail.strip())


class MediaFolderDataset(Dataset):
    """Items: {"media", "text", "index", "requested", "path", "bad", "meta"} (+ "mask", "timing" for audio).

    media: image (3, H, W), video (3, T, H, W), audio (C, N), float32 in [-1, 1]; mask (N,) bool;
    requested: the index asked for; index: the item delivered (a replacement when the asked one
    was bad); bad: the (path, reason) pairs skipped on the way; meta: the metadata row's other fields.
    `dropped`: the metadata rows that are not items, as (file_name, reason) records.
    `video_backend` overrides the config's backend (tests, custom decoders).
    """

    def __init__(self, config: MediaFolderConfig, seed: int = 0, video_backend: VideoBackend | None = None) -> None:
        config.validate()
        self.config = config
        self.seed = seed
        self.epoch = 0
        root = Path(config.path).expanduser()
        if not root.is_dir():
            what = "does not exist" if not root.exists() else "is not a folder"
            raise MissingInput(f"data.path: media folder {root} {what}")
        exts = config.media_extensions
        index = load_captions(root, exts, config.captions, config.text_field)
        self.dropped: list[BadRecord] = index.dropped
        if self.dropped:
            logger.warning("%s: %s", root, dropped_summary(self.dropped))
        if not index.entries:
            why = f" ({len(self.dropped)} metadata row(s) dropped, see above)" if self.dropped else ""
            raise EmptyMediaFolder(f"data.path: no {config.modality} files ({', '.join(exts)}) found under {root}"
                                   f"{why}; check data.modality / data.extensions")
        self.root = root
        self.entries: list[MediaEntry] = index.entries
        self.caption_source = index.source
        known_bad = Counter(reason_kind(e.problem) for e in self.entries if e.problem)
        if known_bad:
            logger.warning("%s: %d of %d entries are unusable (%s); they will be skipped and counted", root,
                           sum(known_bad.values()), len(self.entries), ", ".join(f"{k} {n}" for k, n in known_bad.items()))
        self.spec = config.spec
        self.backend: VideoBackend | None = self.spec.backend(config, video_backend)  # fails here if not installed
        if config.bucketing:
            sizes = make_buckets(config.size, config.bucket_multiple, config.bucket_min_aspect, config.bucket_max_aspect)
            size_of = [assign_bucket(*self._header_size(e), sizes) for e in self.entries]
        else:
            sizes, size_of = [(config.size, config.size)], [0] * len(self.entries)
        lengths = sorted(config.frame_buckets) or [config.frames]
        length_of = [self._length_bucket(e, lengths) for e in self.entries] if config.frame_buckets else \
            [0] * len(self.entries)
        # bucket b = (length index, size index): clips of one length and one (H, W); buckets[b] is its (H, W)
        self.buckets = [hw for _ in lengths for hw in sizes]
        self.bucket_frames = [n for n in lengths for _ in sizes]
        self.bucket_of = [k * len(sizes) + j for k, j in zip(length_of, size_of)]
        self._members: dict[int, list[int]] = {}
        for i, b in enumerate(self.bucket_of):
            self._members.setdefault(b, []).append(i)
        self._bad_cache: dict[str, str] = {}  # path -> reason, files known bad in this process
        # items whose read drew from their generator (a crop or clip start with a choice), counted by `load` in
        # this process: 0 after reading every item means what was read does not depend on the seed
        self.random_draws = 0

    def _header_size(self, e: MediaEntry) -> tuple[int, int]:
        if e.problem is None:
            try:
                return self.spec.header_size(e.path)
            except Exception:  # a header that cannot be read is the reader's to report, as a bad item
                pass
        return (1, 1)  # unreadable: the squarest bucket; it is replaced when read anyway

    def _length_bucket(self, e: MediaEntry, lengths: Sequence[int]) -> int:
        """Index of the longest of `lengths` (ascending) that the clip's source frames fill at the recipe's
        stride / fps; 0 for a clip too short for any (its read then reports it) or whose header is unreadable."""
        if e.problem is not None:
            return 0
        try:
            count, src_fps = self.spec.header_frames(e.path)
            if self.config.verify_frame_count:  # as the reader does: containers may over-report
                real = count_packets(e.path)
                count = count if real is None else min(count, real) if count > 0 else real
        except Exception:  # the reader reports an unreadable file, as a bad item
            return 0
        fits = [k for k, n in enumerate(lengths) if clip_span(n, self.config, src_fps) <= count]
        return fits[-1] if fits else 0

    # ------------------------------------------------------------------ indexing
    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for plain int keys (in workers: only if set before they start)."""
        self.epoch = epoch

    def batch_sampler(self, local_batch: int, rank: int = 0, world_size: int = 1, start: int = 0) -> BucketBatchSampler:
        """Endless single-bucket batches of (index, epoch) keys (works without bucketing too: one bucket)."""
        return BucketBatchSampler(self.bucket_of, local_batch, self.seed, rank, world_size, start)

    def _candidates(self, index: int) -> Iterator[int]:
        """`index`, then the rest of its bucket in order (cyclic), then every other item from `index` on."""
        members = self._members[self.bucket_of[index]]
        k = bisect.bisect_left(members, index)
        n = len(self.entries)
        seen: set[int] = set()
        for j in itertools.chain(members[k:], members[:k], range(index, n), range(index)):
            if j not in seen:
                seen.add(j)
                yield j

    # ------------------------------------------------------------------ loading
    def _read(self, path: Path, size: tuple[int, int], g: torch.Generator, thorough: bool = False,
              frames: int | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.config if frames is None or frames == self.config.frames else replace(self.config, frames=frames)
        return self.spec.read(path, cfg, size, g, backend=self.backend, thorough=thorough)

    def load(self, index: int, epoch: int = 0, size: tuple[int, int] | None = None,
             thorough: bool = False, frames: int | None = None) -> dict[str, Any]:
        """Item `index` exactly (no replacement); `BadMedia` when it is unusable. size / frames: read at these
        (default: the item's bucket's).

        `thorough` (scans): audio is checked in full, not only the window read.
        """
        e = self.entries[index]
        path = str(e.path)
        if e.problem:
            raise _split_reason(e.problem)
        if path in self._bad_cache:
            raise _split_reason(self._bad_cache[path])
        hw = size or self.buckets[self.bucket_of[index]]
        frames = frames or self.bucket_frames[self.bucket_of[index]]
        g = item_generator(self.seed, index, epoch)
        before = g.get_state() if self.config.reads_randomly else None
        try:
            media, extras = call_with_timeout(lambda: self._read(e.path, hw, g, thorough, frames),
                                              self.config.decode_timeout_s, path)
        except BadMedia as exc:
            if exc.permanent:
                self._bad_cache[path] = exc.reason
            raise
        except Exception as exc:  # a reader library failing in a way we did not foresee is still one bad file
            self._bad_cache[path] = f"decode error: {type(exc).__name__}: {exc}"
            raise _split_reason(self._bad_cache[path]) from exc
        if before is not None and not torch.equal(g.get_state(), before):  # readers draw only where there is a choice
            self.random_draws += 1
        return {"media": media, "text": e.text, "index": index, "path": path, "bad": [], "meta": e.extra, **extras}

    def __getitem__(self, key: int | tuple[int, int] | Sequence[int]) -> dict[str, Any]:
        """Item `key`: i, (i, epoch), or (i, epoch, H, W) to read it at that size instead of its bucket's."""
        index, epoch = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), self.epoch)
        if not 0 <= index < len(self.entries):
            raise IndexError(f"item {index} outside a dataset of {len(self.entries)}")
        size, frames = self.buckets[self.bucket_of[index]], self.bucket_frames[self.bucket_of[index]]
        if isinstance(key, (tuple, list)) and len(key) == 4:
            size = (int(key[2]), int(key[3]))
        bad: list[BadRecord] = []
        for j in itertools.islice(self._candidates(index), MAX_CANDIDATES):
            try:
                item = self.load(j, epoch, size, frames=frames)
            except BadMedia as exc:
                bad.append((str(self.entries[j].path), exc.reason))
                logger.debug("bad media %s (%s)", self.entries[j].path, exc.reason)
                continue
            item["bad"] = bad
            item["requested"] = index
            return item
        shown = "; ".join(f"{p} ({r})" for p, r in bad[:5])
        raise BadDataError(f"item {index} and the {len(bad) - 1} items tried in its place are all bad "
                           f"(first: {shown}); run `mmflow prepare` to list every bad file under {self.root}")

    def scan(self, num_workers: int = 0, batch_size: int = 16) -> BadItemLog:
        """Load every item once (epoch 0, no replacement) and return the log of bad ones."""
        return scan(self, num_workers=num_workers, batch_size=batch_size)


def clip_span(frames: int, config: MediaFolderConfig, src_fps: float) -> int:
    """Source frames a clip of `frames` covers at the config's stride, or at its fps from a src_fps source."""
    return clip_offsets(frames, stride=config.stride, src_fps=src_fps, fps=config.fps)[-1] + 1


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of items: media (B, ...), mask (B, N) and timing (B, 2) for audio, index / requested (B,) long,
    text/path/meta lists of B, bad: every item's skipped (path, reason) pairs concatenated."""
    out: dict[str, Any] = {
        "media": torch.stack([it["media"] for it in items]),
        "text": [it["text"] for it in items],
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
        "requested": torch.tensor([it.get("requested", it["index"]) for it in items], dtype=torch.long),
        "path": [it["path"] for it in items],
        "bad": [rec for it in items for rec in it["bad"]],
        "meta": [it["meta"] for it in items],
    }
    for key in EXTRA_FIELDS:
        if key in items[0]:
            out[key] = torch.stack([it[key] for it in items])
    return out


class _ScanView(Dataset):
    """Item i -> its bad records only (no tensors cross the worker pipe)."""

    def __init__(self, dataset: MediaFolderDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> list[BadRecord]:
        try:
            self.dataset.load(i, thorough=True)
        except BadMedia as exc:
            return [(str(self.dataset.entries[i].path), exc.reason)]
        return []


def _concat(records: list[list[BadRecord]]) -> tuple[int, list[BadRecord]]:
    return len(records), [r for rs in records for r in rs]


def scan(dataset: MediaFolderDataset, num_workers: int = 0, batch_size: int = 16) -> BadItemLog:
    """Check every item of `dataset` once (for `mmflow prepare`); returns a BadItemLog of what is bad.

    Items load as in training at epoch 0 (so a video is decoded for its first clip only), except
    that audio files are checked whole for NaN/Inf and silence. Runs `num_workers` processes.
    """
    log = BadItemLog(key="data.max_bad_fraction")
    loader = DataLoader(_ScanView(dataset), batch_size=batch_size, collate_fn=_concat, num_workers=num_workers)
    for n, records in loader:
        log.add(n, len(records), records)
    return log
