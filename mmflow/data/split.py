"""Split a media folder (media + metadata.jsonl) into train/ and test/ folders: a held-out set from one's own data.

    python -m mmflow.data.split ../shared/data/emoji_video64 --out data/emoji_video64 --test 100 --by motion

Deterministic in the seed. `--by KEY` stratifies on a metadata field (each value keeps its share in both halves,
largest remainders first), so a held-out set of a few hundred items still covers every motion, class or style.
The media are symlinked (`--copy` copies them); each half's metadata.jsonl holds its rows as they were, in the
source's order. The halves are written beside the target and renamed into place, and an existing non-empty
target is refused: a split never overwrites anything.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from mmflow.errors import UserError

__all__ = ["SplitError", "SplitResult", "split_folder", "split_rows"]


class SplitError(UserError, ValueError):
    """A folder or metadata row that cannot be split (the message names it)."""


@dataclass
class SplitResult:
    train: Path
    test: Path
    num_train: int
    num_test: int
    test_by_group: dict[str, int]  # the held-out count per value of --by ({"": n} without it)


def _read_rows(src: Path) -> list[tuple[str, dict]]:
    meta = src / "metadata.jsonl"
    if not meta.is_file():
        raise SplitError(f"{src}: no metadata.jsonl (a media folder lists its files and captions there)")
    rows = []
    for n, line in enumerate(meta.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SplitError(f"{meta}:{n}: not a JSON object ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
            raise SplitError(f"{meta}:{n}: a row needs a file_name string")
        name = Path(row["file_name"])
        if name.is_absolute() or ".." in name.parts:
            raise SplitError(f"{meta}:{n}: file_name {row['file_name']!r} is outside the folder")
        if not (src / name).is_file():
            raise SplitError(f"{meta}:{n}: {src / name} does not exist")
        rows.append((line, row))
    if len(rows) < 2:
        raise SplitError(f"{meta}: {len(rows)} row(s); a split needs at least 2")
    return rows


def split_rows(rows: list[dict], test: float, seed: int = 0, by: str | None = None) -> list[bool]:
    """Which rows go to the test half: `test` items (>= 1) or that fraction of them (< 1), stratified on
    the `by` field. Deterministic in seed; at least one row stays on each side."""
    n = len(rows)
    count = round(test * n) if test < 1 else int(test)
    if not 1 <= count <= n - 1:
        raise SplitError(f"--test {test}: {count} of {n} items held out; it must leave at least one on each side")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        if by is not None and by not in row:
            raise SplitError(f"row {i + 1} ({row.get('file_name')}) has no {by!r} field to stratify on")
        groups["" if by is None else str(row[by])].append(i)
    share = {g: count * len(ix) / n for g, ix in groups.items()}
    take = {g: math.floor(s) for g, s in share.items()}
    for g in sorted(share, key=lambda g: (take[g] - share[g], g))[: count - sum(take.values())]:
        take[g] += 1  # largest remainders first (ties by name: deterministic)
    rng = random.Random(seed)
    held = [False] * n
    for g in sorted(groups):
        ix = list(groups[g])
        rng.shuffle(ix)
        for i in ix[: take[g]]:
            held[i] = True
    return held


def split_folder(src: str | Path, out: str | Path, test: float, seed: int = 0, by: str | None = None,
                 copy: bool = False) -> SplitResult:
    """Write out/train and out/test from the media folder `src` (see the module docstring)."""
    src, out = Path(src), Path(out)
    entries = _read_rows(src)
    held = split_rows([row for _, row in entries], test, seed, by)
    for half in ("train", "test"):
        if (out / half).exists() and any((out / half).iterdir()):
            raise SplitError(f"{out / half} exists and is not empty: split into a new folder (nothing was written)")
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = defaultdict(int)
    for half, keep in (("train", False), ("test", True)):
        tmp = out / f".{half}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        lines = []
        for (line, row), h in zip(entries, held):
            if h != keep:
                continue
            target, source = tmp / row["file_name"], (src / row["file_name"]).resolve()
            target.parent.mkdir(parents=True, exist_ok=True)
            if copy:
                shutil.copy2(source, target)
            else:
                os.symlink(source, target)
            lines.append(line)
            if keep:
                counts["" if by is None else str(row[by])] += 1
        (tmp / "metadata.jsonl").write_text("\n".join(lines) + "\n")
        if (out / half).exists():
            (out / half).rmdir()  # empty (checked above)
        tmp.rename(out / half)
    return SplitResult(out / "train", out / "test", held.count(False), held.count(True), dict(sorted(counts.items())))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="a media folder: media files + metadata.jsonl")
    p.add_argument("--out", required=True, help="writes OUT/train and OUT/test")
    p.add_argument("--test", type=float, required=True, help="held-out items: a count (>= 1) or a fraction (< 1)")
    p.add_argument("--by", default=None, help="a metadata field to stratify on (e.g. motion, label)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--copy", action="store_true", help="copy the media instead of symlinking them")
    args = p.parse_args(argv)
    try:
        r = split_folder(args.src, args.out, args.test, args.seed, args.by, args.copy)
    except SplitError as e:
        p.exit(2, f"error: {e}\n")
    per = ", ".join(f"{g} {c}" for g, c in r.test_by_group.items()) if args.by else ""
    print(f"{r.train}: {r.num_train} items   {r.test}: {r.num_test} items" + (f" ({per})" if per else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
