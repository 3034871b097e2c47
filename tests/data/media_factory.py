"""Small media files for the data tests: images, H.264 MP4 (PyAV), WAV/FLAC (soundfile), broken files.

Frames and sounds carry their own identity so tests can tell which frame / sample window was read:
`level_frames` gives frame t the flat grey level `frame_level(t)`, `ramp_audio` is a sample-index ramp.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
import soundfile as sf
from PIL import Image


# ------------------------------------------------------------------ images
def pattern_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint8 (h, w, 3): smooth gradients plus a little noise, different in every pixel region."""
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    img = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) * 127 // max(h + w - 2, 1)], -1)
    return np.clip(img + rng.integers(0, 8, img.shape), 0, 255).astype(np.uint8)


def write_image(path: Path, array: np.ndarray, mode: str | None = None, **save_kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    img.save(path, **save_kwargs)
    return path


def write_jpeg_with_orientation(path: Path, array: np.ndarray, orientation: int) -> Path:
    """JPEG whose stored pixels are `array` and whose EXIF says to display them rotated/flipped."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return write_image(path, array, exif=exif.tobytes(), quality=95)


# ------------------------------------------------------------------ video
def frame_level(t: int) -> int:
    return 16 + 12 * t  # frames 0..19 stay inside 16..244


def level_frames(count: int, h: int = 32, w: int = 48) -> np.ndarray:
    """uint8 (count, h, w, 3): frame t is flat grey `frame_level(t)` (H.264 keeps it almost exactly)."""
    return np.stack([np.full((h, w, 3), frame_level(t), np.uint8) for t in range(count)])


def noisy_frames(count: int, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 (count, h, w, 3): level frames plus texture, so every frame costs many bytes (truncation tests)."""
    rng = np.random.default_rng(seed)
    base = level_frames(count, h, w).astype(np.int32)
    return np.clip(base + rng.integers(-12, 12, base.shape), 0, 255).astype(np.uint8)


def write_mp4(path: Path, frames: np.ndarray, fps: int = 8, crf: int = 12, faststart: bool = False,
              gop: int | None = None) -> Path:
    """H.264 (libx264, yuv420p) MP4 of uint8 frames (T, H, W, 3); H and W must be even.

    `gop`: a keyframe every `gop` frames (so seeking has several keyframes to land on).
    (decord 0.6 cannot return frames of some widths, e.g. 16 and 48: use 32 or 64.)
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"crf": str(crf), "preset": "ultrafast"}
        if gop:
            s.codec_context.gop_size = gop
        for f in frames:
            for packet in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


# ------------------------------------------------------------------ audio
def sine(seconds: float, rate: int, freq: float = 440.0, channels: int = 1, amp: float = 0.5) -> np.ndarray:
    """float32 (n, channels); channel c has frequency freq * (c + 1)."""
    t = np.arange(round(seconds * rate)) / rate
    return np.stack([amp * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)], -1).astype(np.float32)


def ramp_audio(n: int, channels: int = 1) -> np.ndarray:
    """float32 (n, channels): sample k is (k + 1) / (n + 1) (channel c scaled by 1 / (c + 1)), never 0."""
    r = (np.arange(n, dtype=np.float64) + 1) / (n + 1)
    return np.stack([r / (c + 1) for c in range(channels)], -1).astype(np.float32)


def write_audio(path: Path, data: np.ndarray, rate: int, subtype: str | None = None) -> Path:
    """WAV/FLAC/OGG by extension; `subtype` e.g. "PCM_16", "FLOAT"."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, rate, subtype=subtype)
    return path


# ------------------------------------------------------------------ broken files, captions
def write_zero_byte(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_text_file(path: Path, text: str = "this is not media\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def truncate(path: Path, keep: float) -> Path:
    """Cut `path` to the first `keep` fraction of its bytes (in place)."""
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    return path


def write_jsonl(path: Path, rows: Sequence[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_captioned_squares(folder: Path, size: int, captions: Sequence[str], count: int = 4) -> Path:
    """`count` size x size images of a centred square, red for even i and blue for odd, captioned
    captions[i % len(captions)] in folder/metadata.jsonl: a text-to-image set that trains in seconds."""
    rows = []
    for i in range(count):
        img = np.full((size, size, 3), 245, np.uint8)
        img[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = (220, 30, 30) if i % 2 == 0 else (30, 30, 220)
        write_image(folder / f"{i}.png", img)
        rows.append({"file_name": f"{i}.png", "text": captions[i % len(captions)]})
    write_jsonl(folder / "metadata.jsonl", rows)
    return folder
