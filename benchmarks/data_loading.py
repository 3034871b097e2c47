"""Media loading speed and health: items/s of MediaFolderDataset per reader, and how many items were bad.

Reads the folders emoji64 (images), emoji_video64 (videos, decoded with decord and with PyAV) and
music16k (audio) under a data root; every item of each folder is loaded once (epoch 0) through a
DataLoader, bad items are counted with BadItemLog, and the wall time gives items/s.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/data_loading.py                  # ../shared/data
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/data_loading.py /path/to/data --workers 2

A folder missing under the root is reported and skipped. Numbers depend on the disk cache: the
first pass over a folder reads from disk, so each case runs once unmeasured first (--no-warmup to skip).
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from mmflow.config import from_dict
from mmflow.data.bad_items import BadItemLog
from mmflow.data.media_folder import MediaFolderConfig, MediaFolderDataset, collate

REPO = Path(__file__).resolve().parents[1]

# (label, folder, config overrides)
CASES = [
    ("image png 64px", "emoji64", {"modality": "image", "size": 64}),
    ("image png 64->32px random crop", "emoji64", {"modality": "image", "size": 32, "crop": "random"}),
    ("video decord 16f 64px", "emoji_video64", {"modality": "video", "size": 64, "frames": 16, "video_backend": "decord"}),
    ("video decord, no frame check", "emoji_video64", {"modality": "video", "size": 64, "frames": 16,
                                                       "video_backend": "decord", "verify_frame_count": False}),
    ("video pyav 16f 64px", "emoji_video64", {"modality": "video", "size": 64, "frames": 16, "video_backend": "pyav"}),
    ("video decord 8f stride 2", "emoji_video64", {"modality": "video", "size": 64, "frames": 8, "stride": 2,
                                                   "video_backend": "decord"}),
    ("video pyav 8f stride 2", "emoji_video64", {"modality": "video", "size": 64, "frames": 8, "stride": 2,
                                                 "video_backend": "pyav"}),
    ("audio wav 16k 4s mono", "music16k", {"modality": "audio", "sample_rate": 16000, "seconds": 4.0}),
    ("audio wav 16k->24k 2s stereo", "music16k", {"modality": "audio", "sample_rate": 24000, "seconds": 2.0,
                                                  "channels": 2}),
]


def run_case(root: Path, folder: str, overrides: dict, workers: int, batch: int) -> tuple[int, BadItemLog, float, tuple]:
    cfg = from_dict(MediaFolderConfig, {"path": str(root / folder), **overrides})
    ds = MediaFolderDataset(cfg, seed=0)
    log = BadItemLog(log=True)
    loader = DataLoader(ds, batch_size=batch, collate_fn=collate, num_workers=workers)
    shape: tuple = ()
    t0 = time.perf_counter()
    for b in loader:
        log.update(b)
        shape = tuple(b["media"].shape[1:])
    return len(ds), log, time.perf_counter() - t0, shape


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", nargs="?", default=str(REPO / ".." / "shared" / "data"), help="folder holding the datasets")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--no-warmup", action="store_true", help="measure the first pass (cold disk cache)")
    p.add_argument("--only", default="", help="run only cases whose label contains this text")
    p.add_argument("--cache", action="append", default=[], metavar="DIR",
                   help="also time reading a `mmflow prepare` cache folder (repeatable)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="[%(name)s] %(message)s")
    torch.set_num_threads(1)
    root = Path(args.root).resolve()
    print(f"data root {root}; workers {args.workers}, batch {args.batch}; torch {torch.__version__}, "
          f"python {platform.python_version()}, {platform.machine()}")
    print(f"{'case':34s} {'items':>6s} {'bad':>4s} {'items/s':>9s}  item shape")
    failed = False
    for label, folder, overrides in CASES:
        if args.only and args.only not in label:
            continue
        if not (root / folder).is_dir():
            print(f"{label:34s} missing folder {root / folder}, skipped")
            continue
        if not args.no_warmup:
            run_case(root, folder, overrides, args.workers, args.batch)
        n, log, seconds, shape = run_case(root, folder, overrides, args.workers, args.batch)
        failed |= log.bad > 0
        print(f"{label:34s} {n:6d} {log.bad:4d} {n / seconds:9.1f}  {shape}")
        if log.paths:
            print("  " + log.summary().replace("\n", "\n  "))
    for folder in args.cache:
        n, seconds = read_cache(Path(folder), args.workers, args.batch)
        print(f"{'cache ' + Path(folder).name:34s} {n:6d} {0:4d} {n / seconds:9.1f}  (safetensors shards)")
    sys.exit(1 if failed else 0)


def read_cache(folder: Path, workers: int, batch: int) -> tuple[int, float]:
    """(items, seconds) to read every item of a cache once through a DataLoader (after one warm-up pass)."""
    from torch.utils.data import default_collate

    from mmflow.data.cache import CachedDataset

    ds = CachedDataset(folder)
    for timed in (False, True):
        t0 = time.perf_counter()
        n = sum(len(b["index"]) for b in DataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=default_collate))
        if timed:
            return n, time.perf_counter() - t0
    raise AssertionError("unreachable")


if __name__ == "__main__":
    main()
