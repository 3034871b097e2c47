"""Atomic file and folder writes: a kill at any moment leaves either the old or the new content.

A kill can still leave the temporaries of a write behind (`.tmp-<name>-<hex>`, `.old-<name>-<hex>`
folders, `.<name>.<hex>.tmp` files); they are recognisable by name, and `recover_leftovers` finishes
or undoes what they were part of.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

# Test-only fault injection: MMFLOW_TEST_KILL_AT="phase:count" makes the count-th `crash_point(phase)`
# of the process SIGKILL itself (tests/train/test_kill_resume.py); unset, crash_point does nothing.
KILL_AT_ENV = "MMFLOW_TEST_KILL_AT"
_crash_counts: dict[str, int] = {}


def crash_point(phase: str) -> None:
    """Test-only: die here as a `kill -9` would, when MMFLOW_TEST_KILL_AT names this phase and count.

    Phases: step (after an optimizer step), checkpoint (a checkpoint written but not yet renamed into
    place), export (model/ copied but not renamed; and between the two renames of atomic_folder),
    validation (pictures drawn, metrics not yet written); `any` counts the points of every phase.
    """
    spec = os.environ.get(KILL_AT_ENV)
    want, _, count = (spec or "").partition(":")
    if want not in (phase, "any"):
        return
    _crash_counts[want] = _crash_counts.get(want, 0) + 1
    if _crash_counts[want] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` via a temporary file in the same folder and os.replace."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder and os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _non_finite_key(data: Any, where: str = "") -> str | None:
    """The dotted key of the first NaN/Infinity in `data`, or None."""
    if isinstance(data, float) and not math.isfinite(data):
        return where or "(the value itself)"
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, (list, tuple)) else ()
    for k, v in items:
        found = _non_finite_key(v, f"{where}.{k}" if where else str(k))
        if found is not None:
            return found
    return None


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as JSON, atomically. NaN and Infinity are refused (they are not JSON): a caller
    writes null for a value it does not know."""
    try:
        text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False)
    except ValueError as e:
        key = _non_finite_key(data)
        if key is None:
            raise
        raise ValueError(f"{path}: refusing to write the non-finite number at {key} as JSON (write null "
                         f"for a value that is not known)") from e
    write_text_atomic(path, text + "\n")


@contextmanager
def atomic_folder(dest: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `dest` (rename), on error it is removed.

    A reader never sees a half-written `dest`: it is the old folder until the final rename. When `dest`
    exists it is first renamed aside, so the window without any `dest` is two renames long.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".tmp-{dest.name}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if dest.exists():
            if not overwrite:
                raise FileExistsError(f"{dest} already exists")
            old = dest.with_name(f".old-{dest.name}-{uuid.uuid4().hex[:8]}")
            os.replace(dest, old)
            crash_point("export")  # the window recover_leftovers repairs: no dest, an old and a new copy
            try:
                os.replace(tmp, dest)
            except BaseException:
                os.replace(old, dest)  # put the previous content back: "old or new", never neither
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# what atomic_folder (.tmp-<name>-<hex>, .old-<name>-<hex>) and write_text_atomic (.<name>.<hex>.tmp; also
# config.dump_yaml's mkstemp names, 8 characters of [a-z0-9_]) leave
_LEFTOVER = re.compile(r"^\.(?:(?:tmp|old)-(?P<folder>.+)-[0-9a-f]{8}|(?P<file>.+)\.[0-9a-z_]{8}\.tmp)$")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def recover_leftovers(folder: str | os.PathLike) -> list[str]:
    """Finish or undo the atomic writes in `folder` (not its subfolders) that a kill cut short.

    When a destination is missing but its `.old-<name>-*` folder is there, the kill fell between
    atomic_folder's two renames: the old folder is the last complete one and is renamed back (the
    newest, should there be several). Every other leftover is removed. Returns one line per action,
    naming the path. Call it only while nothing else writes into `folder`: a live write's temporaries
    look the same.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    by_dest: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if m := _LEFTOVER.match(p.name):
            by_dest.setdefault(m.group("folder") or m.group("file"), []).append(p)
    actions: list[str] = []
    for name, paths in by_dest.items():
        dest = folder / name
        olds = [p for p in paths if p.name.startswith(".old-") and p.is_dir()]
        if olds and not dest.exists():
            keep = max(olds, key=lambda p: p.stat().st_mtime)
            os.replace(keep, dest)
            paths.remove(keep)
            actions.append(f"restored {dest} from {keep.name} (a replacement was cut short between its two renames)")
        for p in paths:
            _remove(p)
            actions.append(f"removed {p} (left by a write that was cut short)")
    if actions:
        fsync_dir(folder)
    return actions
