"""Writing media: PNG with Pillow, MP4 (H.264) with PyAV, WAV / FLAC with soundfile. Tensors are in [-1, 1].

Which writer a modality uses is its spec's choice (mmflow.modalities: `get_modality(name).write`).
Provenance (prompt, seed, solver, ...) rides inside the file where the format has room for it: PNG text
chunks, and in MP4 one JSON object under the container's `comment` tag (see MP4_METADATA_KEY);
`read_png_text` / `read_mp4_metadata` read it back."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmflow.utils.fs import fsync_dir

MetadataValue = str | float | int
# MP4's default muxer keeps only the tags it knows (title, comment, ...) and drops custom keys unless
# told `movflags=use_metadata_tags`, whose `mdta` boxes many players ignore: so all keys go as one JSON
# object under the standard comment tag, which also keeps numbers numbers.
MP4_METADATA_KEY = "comment"


def _uint8(x: Tensor) -> np.ndarray:
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.stem}.tmp{path.suffix}")


def png_info(metadata: Mapping[str, MetadataValue] | None) -> Any:
    """Pillow PngInfo with one text chunk per key (str(value); iTXt where the text is not Latin-1), or None."""
    from PIL.PngImagePlugin import PngInfo

    if not metadata:
        return None
    info = PngInfo()
    for key, value in metadata.items():
        info.add_text(key, str(value))
    return info


def read_png_text(path: str | os.PathLike) -> dict[str, str]:
    """The text chunks of a PNG (tEXt, zTXt and iTXt) by key; values are text, as the format stores them."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()  # chunks after the image data are read only with it
        return dict(getattr(im, "text", {}))


def write_png(image: Tensor, path: str | os.PathLike, metadata: Mapping[str, MetadataValue] | None = None) -> Path:
    """image (C, H, W) with C = 1 or 3 -> PNG (written to a temporary name, then renamed), `metadata` as
    text chunks."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = _uint8(image).transpose(1, 2, 0)  # (H, W, C)
    tmp = _tmp(path)
    Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(tmp, format="PNG", pnginfo=png_info(metadata))
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def write_mp4(video: Tensor, path: str | os.PathLike, fps: float = 8.0, crf: int = 17,
              metadata: Mapping[str, MetadataValue] | None = None) -> Path:
    """video (3, T, H, W) -> H.264 MP4 (yuv420p, so H and W are padded to even sizes by edge repetition),
    `metadata` as one JSON object under the container's MP4_METADATA_KEY tag."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = _uint8(video).transpose(1, 2, 3, 0)  # (T, H, W, 3)
    t, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    tmp = _tmp(path)
    with av.open(str(tmp), mode="w", format="mp4") as container:
        if metadata:
            container.metadata[MP4_METADATA_KEY] = json.dumps(dict(metadata), sort_keys=True, allow_nan=False)
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))  # 29.97 stays exact
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": str(crf)}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def read_mp4_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """What `write_mp4` stored as `metadata`; {} for a file without it (no tag, or a comment that is not
    a JSON object: someone else's text)."""
    import av

    with av.open(str(path)) as container:
        text = container.metadata.get(MP4_METADATA_KEY)
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def write_wav(audio: Tensor, path: str | os.PathLike, sample_rate: int) -> Path:
    """audio (C, N) in [-1, 1] -> 16-bit PCM WAV, or FLAC when `path` ends in .flac."""
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    fmt = "FLAC" if path.suffix.lower() == ".flac" else "WAV"
    sf.write(str(tmp), audio.detach().float().cpu().clamp(-1, 1).numpy().T, sample_rate, subtype="PCM_16", format=fmt)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path

