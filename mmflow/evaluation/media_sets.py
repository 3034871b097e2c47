"""A folder of media to evaluate: real data (an imagefolder/audiofolder with captions) or generated
samples (the output folder of `mmflow sample`, whose samples.json lists the files and their prompts).

    fake = load_media_set("runs/emoji/samples")               # modality found from the files
    real = load_media_set("../shared/data/emoji64", modality=fake.modality)
    for media, idx in fake.batches(32): ...                   # (b, C, ...) in [-1, 1], same shape per batch

Files are read whole (Modality.read_whole: no resize or crop; extractors resize themselves), batched
by equal shape; a file that does not decode is skipped and recorded in `skipped` (path, reason), never
fatal. A folder with no media, or with media of two modalities, is refused naming what it holds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from mmflow.data.bad_items import BadMedia
from mmflow.data.captions import find_media, load_captions
from mmflow.errors import MissingInput, UserError
from mmflow.modalities import MODALITIES, get_modality

__all__ = ["MediaSet", "MediaSetError", "load_media_set"]

SAMPLES_INDEX = "samples.json"  # written by FlowPipeline.save: the files and their prompts
PREVIEWS = {"samples.png"}  # pictures of the samples, not samples


class MediaSetError(UserError, ValueError):
    """A folder that cannot be evaluated as one set (no media, several modalities, a mismatch)."""


@dataclass
class MediaSet:
    """root: the folder; modality: a name in mmflow.modalities; files: the media, in a fixed order;
    captions: one per file ("" when none); skipped: (path, reason) of files that did not decode."""

    root: Path
    modality: str
    files: list[Path]
    captions: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def has_captions(self) -> bool:
        return any(self.captions)

    def fingerprint(self) -> str:
        """sha256 over the files' relative paths and contents (the key of cached real-side statistics)."""
        h = hashlib.sha256(self.modality.encode())
        for f in self.files:
            h.update(str(f.relative_to(self.root)).encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()

    def batches(self, batch_size: int, sample_rate: int | None = None, channels: int | None = None
                ) -> Iterator[tuple[Tensor, list[int]]]:
        """(media (b, C, ...) in [-1, 1], their indices into `files`): consecutive files of equal shape
        together, at most batch_size; audio resampled / mixed as asked. Bad files land in `skipped`."""
        spec = get_modality(self.modality)
        items: list[Tensor] = []
        index: list[int] = []
        for i, path in enumerate(self.files):
            try:
                x, _ = spec.read_whole(path, sample_rate=sample_rate, channels=channels)
            except BadMedia as e:
                if all(str(path) != done for done, _ in self.skipped):  # a second pass names each file once
                    self.skipped.append((str(path), e.reason))
                continue
            if items and (x.shape != items[0].shape or len(items) == batch_size):
                yield torch.stack(items), index
                items, index = [], []
            items.append(x)
            index.append(i)
        if items:
            yield torch.stack(items), index


def _modality_of(root: Path, files_by_modality: dict[str, list[Path]], modality: str | None) -> str:
    found = {m: len(f) for m, f in files_by_modality.items() if f}
    if modality is not None:
        get_modality(modality)  # an unknown name is named with the known ones
        if not found.get(modality):
            held = ", ".join(f"{n} {m}" for m, n in found.items()) or "no media files"
            raise MediaSetError(f"{root} holds no {modality} files ({held})")
        return modality
    if not found:
        exts = sorted({e for spec in MODALITIES.values() for e in spec.extensions})
        raise MediaSetError(f"{root} holds no media files (looked for {', '.join(exts)}, recursively)")
    if len(found) > 1:
        held = ", ".join(f"{n} {m}" for m, n in sorted(found.items()))
        raise MediaSetError(f"{root} holds media of several modalities ({held}); evaluate one at a time "
                            "(--modality) or split the folder")
    return next(iter(found))


def load_media_set(folder: str | Path, modality: str | None = None) -> MediaSet:
    """The media under `folder` (recursively) with their captions: from samples.json when the folder is
    `mmflow sample` output, else from metadata.jsonl / metadata.csv / .txt sidecars (none: "")."""
    root = Path(folder)
    if not root.is_dir():
        raise MissingInput(f"{root} is not a folder of media")
    index = root / SAMPLES_INDEX
    if index.is_file():
        return _from_samples_index(root, index, modality)
    by_modality = {m: [p for p in find_media(root, spec.extensions) if p.name not in PREVIEWS]
                   for m, spec in MODALITIES.items()}
    name = _modality_of(root, by_modality, modality)
    spec = get_modality(name)
    captions = {e.path: e.text for e in load_captions(root, spec.extensions).entries}
    files = by_modality[name]
    return MediaSet(root, name, files, [captions.get(f, "") for f in files])


def _from_samples_index(root: Path, index: Path, modality: str | None) -> MediaSet:
    """The files samples.json lists, in its order, with their prompts (labels as text)."""
    try:
        rows = json.loads(index.read_text())["samples"]
        files = list(dict.fromkeys(root / r["file"] for r in rows))
        inputs = {root / r["file"]: r.get("input") for r in rows}
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise MediaSetError(f"{index}: not an index written by `mmflow sample` ({type(e).__name__}: {e})") from None
    by_modality = {m: [f for f in files if f.suffix.lower().lstrip(".") in spec.extensions]
                   for m, spec in MODALITIES.items()}
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise MissingInput(f"{index} lists {len(missing)} file(s) that are not there, e.g. {missing[0]}")
    name = _modality_of(root, by_modality, modality)
    files = by_modality[name]
    return MediaSet(root, name, files, ["" if inputs[f] is None else str(inputs[f]) for f in files])
