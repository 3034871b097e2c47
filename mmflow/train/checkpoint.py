"""Checkpoint folders: atomic writes, a manifest that proves completeness, and finding the newest good one.

A checkpoint is `checkpoints/step_NNNNNNNN/`. It is written under a temporary name and renamed only
after every file is on disk and MANIFEST.json (sizes and sha256 of every file) is written last, so a
kill at any moment leaves the previous checkpoints untouched and never a half-written `step_*`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from mmflow.utils.fs import write_json_atomic

logger = logging.getLogger(__name__)
MANIFEST = "MANIFEST.json"
_STEP_RE = re.compile(r"^step_(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def tmp_dir_name(step: int) -> str:
    return f".tmp-{step_dir_name(step)}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    write_json_atomic(folder / MANIFEST, {"files": entries})


def verify_checkpoint(folder: Path, hashes: bool = True) -> str | None:
    """None when `folder` is complete and intact, else the reason it is not."""
    manifest = folder / MANIFEST
    if not manifest.exists():
        return f"no {MANIFEST} (the write did not finish)"
    try:
        entries = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError) as e:
        return f"unreadable {MANIFEST}: {e}"
    for rel, meta in entries.items():
        p = folder / rel
        if not p.is_file():
            return f"missing file {rel}"
        if p.stat().st_size != meta["size"]:
            return f"{rel} has {p.stat().st_size} bytes, expected {meta['size']}"
        if hashes and _sha256(p) != meta["sha256"]:
            return f"{rel} is corrupt (sha256 mismatch)"
    return None


def export_matches(checkpoint: Path, folder: Path) -> bool:
    """Whether `folder` holds exactly the checkpoint's models/ and pipeline.json (per its MANIFEST)."""
    entries = json.loads((checkpoint / MANIFEST).read_text())["files"]
    want = {rel: meta for rel, meta in entries.items() if Path(rel).parts[0] == "models" or rel == "pipeline.json"}
    if not folder.is_dir() or {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} != set(want):
        return False
    return all((folder / rel).stat().st_size == meta["size"] and _sha256(folder / rel) == meta["sha256"]
               for rel, meta in want.items())


@dataclass
class CheckpointRef:
    step: int
    path: Path


def list_checkpoints(root: Path) -> list[CheckpointRef]:
    """All `step_*` folders under root, newest first (not yet verified)."""
    if not root.is_dir():
        return []
    refs = [CheckpointRef(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_RE.match(p.name))]
    return sorted(refs, key=lambda r: r.step, reverse=True)


def complete_checkpoints(root: Path) -> list[CheckpointRef]:
    """The `step_*` folders whose write finished (they hold a MANIFEST), newest first; not hash-checked.

    A run folder "holds checkpoints" when this is not empty: anything else under checkpoints/ is the
    remains of a save that was cut short, and never loadable.
    """
    return [r for r in list_checkpoints(root) if (r.path / MANIFEST).is_file()]


def remove_incomplete(root: Path) -> list[str]:
    """Remove what cut-short saves left under root: `.tmp-step_*` folders and `step_*` without a MANIFEST.

    Returns one line per removed folder, naming it (the caller logs them).
    """
    if not root.is_dir():
        return []
    complete = {r.path for r in complete_checkpoints(root)}
    removed = []
    for p in sorted(root.iterdir()):
        if p.is_dir() and (p.name.startswith(".tmp-step_") or (_STEP_RE.match(p.name) and p not in complete)):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(f"removed {p} (a checkpoint save that did not finish)")
    return removed


def finalize(tmp: Path, root: Path, step: int) -> Path:
    """Write the manifest and rename the temporary folder into place."""
    write_manifest(tmp)
    dest = root / step_dir_name(step)
    if dest.exists():  # a re-run of the same step after a resume: replace it, never leaving half of it
        aside = root / f"{tmp_dir_name(step)}-replaced"  # a .tmp-step_* name: cleaned up if a kill leaves it
        os.replace(dest, aside)
        os.replace(tmp, dest)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(tmp, dest)
    return dest


def prune(root: Path, keep: int) -> None:
    """Keep the `keep` newest intact checkpoints; remove older ones and stale temporary folders."""
    for ref in complete_checkpoints(root)[keep:]:
        shutil.rmtree(ref.path, ignore_errors=True)
    for p in root.glob(".tmp-step_*"):
        shutil.rmtree(p, ignore_errors=True)
