"""Media files and their captions, in the Hugging Face imagefolder/audiofolder conventions.

A folder holds media files (any depth) and captions in one of three forms:
    metadata.jsonl   one JSON object a line: {"file_name": "a/b.png", "text": "a cat", ...extra}
    metadata.csv     columns file_name, text, ...extra
    b.txt            a sidecar next to b.png holding its caption
`file_name` is relative to the metadata file's folder; metadata files may sit in subfolders.
Auto-detection prefers jsonl, then csv, then sidecars; with none the items get text "" (the model
trains unconditionally) and a warning says so. A row may list a file twice (several captions).

Problems that concern one item (a caption that is not text, a listed file that does not exist)
become entries with a `problem` reason: the dataset skips and counts them like broken media. A
malformed metadata file (bad JSON, no file_name column) is the user's to fix and raises at once.

A row that cannot name an item of this folder is dropped, never becomes an item, and goes into
`CaptionIndex.dropped` as a (path, "kind: detail") record for the caller to report with the bad
media (see bad_items.py): an absolute `file_name` ("absolute path"), one whose normalised path
leaves the folder ("outside folder": `../x.png`, `sub/../../x.png`), one holding a NUL byte ("bad file
name"), and one whose extension is not the modality's ("other extension": an audio row of a shared
metadata file, a `.txt`). The folder check is lexical (the joined path normalised, not resolved), so
a symlink the user made inside the folder is followed wherever it points: the folder's owner decides
what it contains, a metadata row does not. Kept on purpose: a file listed twice (several captions) and
an empty caption (trains unconditionally).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mmflow.data.bad_items import BadRecord
from mmflow.errors import MissingInput, UserError

__all__ = ["CaptionIndex", "CaptionMode", "MediaEntry", "MetadataError", "find_media", "load_captions"]

logger = logging.getLogger("mmflow.data")

CaptionMode = Literal["auto", "jsonl", "csv", "txt", "none"]
JSONL, CSV = "metadata.jsonl", "metadata.csv"


class MetadataError(UserError, ValueError):
    """A metadata file the user must fix as a whole (not valid JSON, no file_name column or value)."""


@dataclass
class MediaEntry:
    """One item of a media folder: a file, its caption and the metadata row's other fields."""

    path: Path
    text: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None  # a BadMedia-style reason ("missing file: ...") when known unusable


@dataclass
class CaptionIndex:
    entries: list[MediaEntry]
    source: Literal["jsonl", "csv", "txt", "none"]  # where the captions came from
    uncaptioned: list[Path] = field(default_factory=list)  # media files without a caption (text "")
    dropped: list[BadRecord] = field(default_factory=list)  # metadata rows that are not items, with why


def _visible(rel: Path) -> bool:
    # hidden files and folders (".git", macOS "._x.png" resource forks) are never media
    return not any(part.startswith(".") for part in rel.parts)


def _norm_ext(extensions: Iterable[str]) -> frozenset[str]:
    return frozenset("." + e.lower().lstrip(".") for e in extensions)


def find_media(root: str | Path, extensions: Iterable[str]) -> list[Path]:
    """Media files under `root` (recursive, case-insensitive extensions, hidden ones skipped), sorted."""
    root = Path(root)
    exts = _norm_ext(extensions)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in exts:
                found.append(Path(dirpath) / name)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _metadata_files(root: Path, name: str) -> list[Path]:
    return sorted((p for p in root.rglob(name) if _visible(p.relative_to(root)) and p.is_file()),
                  key=lambda p: p.relative_to(root).as_posix())


def _key(path: Path) -> str:
    return os.path.normpath(os.path.abspath(path))


def _drop_reason(root: Path, meta: Path, name: str, exts: frozenset[str]) -> tuple[Path | None, str]:
    """(root / the row's normalised path, "") for a usable `file_name`, else (None, "kind: detail").

    Lexical on purpose (see the module docstring): `..` may not climb out of `root`, but symlinks
    inside it are not resolved.
    """
    if "\0" in name:
        return None, "bad file name: contains a NUL byte"
    if os.path.isabs(name):
        return None, f"absolute path: file_name must be relative to {meta.parent}"
    rel = os.path.normpath(os.path.join(os.path.relpath(meta.parent, root), name))
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        return None, f"outside folder: leaves {root}"
    ext = os.path.splitext(name)[1].lower()
    if ext not in exts:
        return None, f"other extension: {ext or 'none'} is not one of {', '.join(sorted(exts))}"
    return root / rel, ""


def _caption_problem(value: Any, text_field: str, where: str) -> str | None:
    if isinstance(value, str):
        return None
    if value is _MISSING:
        return f"non-text caption: no {text_field!r} field ({where})"
    return f"non-text caption: {type(value).__name__} {value!r:.60} ({where})"


_MISSING = object()


def _rows_jsonl(meta: Path) -> Iterable[tuple[str, dict[str, Any]]]:
    with meta.open(encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise MetadataError(f"{meta}:{lineno}: not valid JSON ({exc.msg}); each line of {JSONL} must be "
                                    f'one object like {{"file_name": "a.png", "text": "a cat"}}') from exc
            if not isinstance(row, dict):
                raise MetadataError(f"{meta}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield f"{meta}:{lineno}", row


def _rows_csv(meta: Path) -> Iterable[tuple[str, dict[str, Any]]]:
    with meta.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "file_name" not in reader.fieldnames:
            raise MetadataError(f"{meta}: needs a 'file_name' column, found columns {reader.fieldnames}")
        for lineno, row in enumerate(reader, 2):  # line 1 is the header
            yield f"{meta}:{lineno}", {k: v for k, v in row.items() if k is not None}


def _from_metadata(root: Path, metas: list[Path], kind: str, exts: frozenset[str], text_field: str,
                   media: list[Path]) -> CaptionIndex:
    entries: list[MediaEntry] = []
    dropped: list[BadRecord] = []
    listed: set[str] = set()
    for meta in metas:
        rows = _rows_jsonl(meta) if kind == "jsonl" else _rows_csv(meta)
        for where, row in rows:
            name = row.get("file_name")
            if not isinstance(name, str) or not name:
                raise MetadataError(f"{where}: needs a 'file_name' string, got {name!r}")
            path, reason = _drop_reason(root, meta, name, exts)
            if path is None:
                dropped.append((name, f"{reason} (listed at {where})"))
                continue
            listed.add(_key(path))
            text = row.get(text_field, _MISSING)
            extra = {k: v for k, v in row.items() if k not in ("file_name", text_field)}
            problem = _caption_problem(text, text_field, where)
            if not os.path.isfile(path):  # os.path: False, not an exception, for names the OS refuses
                problem = f"missing file: listed at {where}"
            entries.append(MediaEntry(path, text if isinstance(text, str) else "", extra, problem))
    uncaptioned = [p for p in media if _key(p) not in listed]
    if uncaptioned:
        logger.warning("%d media file(s) under %s have no row in %s and train with empty text, e.g. %s",
                       len(uncaptioned), root, metas[0].name, ", ".join(str(p) for p in uncaptioned[:3]))
    entries += [MediaEntry(p) for p in uncaptioned]
    return CaptionIndex(entries, kind, uncaptioned, dropped)  # type: ignore[arg-type]


def _from_sidecars(root: Path, media: list[Path]) -> CaptionIndex:
    entries, uncaptioned = [], []
    for p in media:
        side = p.with_suffix(".txt")
        if not side.is_file():
            uncaptioned.append(p)
            entries.append(MediaEntry(p))
            continue
        try:
            entries.append(MediaEntry(p, side.read_bytes().decode("utf-8-sig").strip()))
        except UnicodeDecodeError:
            entries.append(MediaEntry(p, "", problem=f"non-text caption: {side} is not UTF-8 text"))
    if uncaptioned:
        logger.warning("%d media file(s) under %s have no .txt caption and train with empty text, e.g. %s",
                       len(uncaptioned), root, ", ".join(str(p) for p in uncaptioned[:3]))
    return CaptionIndex(entries, "txt", uncaptioned)


def load_captions(root: str | Path, extensions: Iterable[str], mode: CaptionMode = "auto",
                  text_field: str = "text") -> CaptionIndex:
    """Index the media under `root` with their captions (see the module docstring).

    `extensions` selects the modality's files (also filtering rows of shared metadata files);
    `text_field` is the caption's key in jsonl/csv rows. Rows that are not items are returned in
    `dropped`, not logged: the caller reports them (MediaFolderDataset warns once and the trainer's
    bad-media summary counts them).
    """
    root = Path(root)
    exts = _norm_ext(extensions)
    media = find_media(root, exts)
    if mode == "auto":
        if _metadata_files(root, JSONL):
            mode = "jsonl"
        elif _metadata_files(root, CSV):
            mode = "csv"
        elif any(p.with_suffix(".txt").is_file() for p in media):
            mode = "txt"
        else:
            logger.warning("no captions under %s (no %s, %s or .txt sidecars): all %d items get empty text, "
                           "so the model trains unconditionally", root, JSONL, CSV, len(media))
            mode = "none"
    if mode in ("jsonl", "csv"):
        metas = _metadata_files(root, JSONL if mode == "jsonl" else CSV)
        if not metas:
            raise MissingInput(f"captions={mode!r} but there is no {JSONL if mode == 'jsonl' else CSV} under {root}")
        return _from_metadata(root, metas, mode, exts, text_field, media)
    if mode == "txt":
        return _from_sidecars(root, media)
    if mode == "none":
        return CaptionIndex([MediaEntry(p) for p in media], "none", list(media))
    raise ValueError(f"captions: unknown mode {mode!r}; expected one of auto, jsonl, csv, txt, none")
