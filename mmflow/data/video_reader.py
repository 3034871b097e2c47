"""Video clips from files to float tensors (3, T, H, W) in [-1, 1], through swappable decoders.

Backends (`VideoBackend`): "decord" (fast random access), "pyav" (PyAV/libav, decodes forward from
the nearest keyframe), "torchcodec" (only when installed and asked for), and "auto": decord with a
fall back to PyAV for any file decord cannot open or decode, or when decord is not installed.

Frame counts are not trusted: containers can claim more frames than they hold (truncated uploads;
an nb_frames computed from duration x fps), and decord, asked for such frames, errors or even spins
forever (dmlc/decord#373). So by default the reported count is clamped to the number of video
packets the demuxer really finds (`count_packets`, no decoding, cached per process) before frames
are chosen. Choosing them (`sample_frame_indices`): `frames` frames `stride` apart, or at a target
`fps`; the first one at a random offset (from the item's generator) or at 0; clips too short are
skipped (BadMedia "too few frames: N < M") or played as a loop. Hangs are the dataset's to abandon
(`bad_items.call_with_timeout`).
"""

from __future__ import annotations

import logging
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from mmflow.data.bad_items import BadMedia, check_file
from mmflow.data.image_reader import Crop, cover_box, pil_to_tensor, rand_below, resize_crop
from mmflow.errors import UserError

__all__ = ["AutoBackend", "DecordBackend", "PyAVBackend", "TorchCodecBackend", "VideoBackend",
           "VideoBackendUnavailable", "VideoFile", "count_packets", "get_video_backend", "read_video",
           "sample_frame_indices", "video_size"]

logger = logging.getLogger("mmflow.data")


class VideoBackendUnavailable(UserError, RuntimeError):
    """The configured video backend cannot be used here (not installed)."""


class VideoFile(ABC):
    """An open video: `num_frames` as the container reports it, `fps` (0 when unknown)."""

    num_frames: int
    fps: float

    @abstractmethod
    def read(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at `indices` (any order, repeats allowed) -> uint8 (T, H, W, 3) RGB."""

    def close(self) -> None:
        pass


class VideoBackend(ABC):
    """Opens video files. Instances hold no open files, so they pickle into DataLoader workers."""

    name: ClassVar[str]

    @abstractmethod
    def open(self, path: str) -> VideoFile:
        """Open `path`; raises (any exception) when the file cannot be read."""


# --------------------------------------------------------------------------------------------------
# decord
# --------------------------------------------------------------------------------------------------


class _DecordFile(VideoFile):
    def __init__(self, path: str, num_threads: int) -> None:
        import decord

        self.vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=num_threads)
        self.num_frames = len(self.vr)
        self.fps = float(self.vr.get_avg_fps() or 0.0)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        return self.vr.get_batch(list(indices)).asnumpy()

    def close(self) -> None:
        del self.vr


class DecordBackend(VideoBackend):
    """decord's VideoReader; `num_threads` 1 because DataLoader workers already run in parallel."""

    name = "decord"

    def __init__(self, num_threads: int = 1) -> None:
        try:
            import decord
        except ImportError as exc:
            raise VideoBackendUnavailable("data.video_backend = 'decord' but decord is not installed "
                                          "(pip install decord), or use 'pyav' / 'auto'") from exc
        decord.logging.set_level(decord.logging.QUIET)  # its libav prints every broken file to stderr
        self.num_threads = num_threads

    def open(self, path: str) -> VideoFile:
        return _DecordFile(path, self.num_threads)


# --------------------------------------------------------------------------------------------------
# PyAV
# --------------------------------------------------------------------------------------------------


class _PyAVFile(VideoFile):
    def __init__(self, path: str) -> None:
        import av

        self.container = av.open(path)
        if not self.container.streams.video:
            self.container.close()
            raise BadMedia("not a media file", "no video stream")
        self.stream = s = self.container.streams.video[0]
        s.codec_context.thread_count = 1
        rate = s.average_rate or s.guessed_rate
        self.fps = float(rate) if rate else 0.0
        n = s.frames
        if not n and s.duration and s.time_base and self.fps:  # containers without a frame count
            n = round(float(s.duration * s.time_base) * self.fps)
        self.num_frames = int(n or 0)
        self._used = False  # a second read must seek back: the decoder is wherever the last one stopped

    def _index(self, frame, counter: int) -> int:
        s = self.stream
        if frame.pts is None or not self.fps or s.time_base is None:
            return counter
        return round(float((frame.pts - (s.start_time or 0)) * s.time_base) * self.fps)

    def _decode(self, wanted: set[int], seek_to: int) -> dict[int, np.ndarray]:
        s = self.stream
        if seek_to > 0 or self._used:
            # seek lands on the keyframe at or before the target; pts tell where we are from there
            target = (s.start_time or 0) + (int(seek_to / self.fps / s.time_base) if seek_to > 0 else 0)
            self.container.seek(target, stream=s, backward=True, any_frame=False)
        self._used = True
        out: dict[int, np.ndarray] = {}
        last = max(wanted)
        for counter, frame in enumerate(self.container.decode(s)):
            if seek_to > 0 and frame.pts is None:
                raise _NoTimestamps
            i = self._index(frame, counter)
            if i in wanted:
                out[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
        return out

    def read(self, indices: Sequence[int]) -> np.ndarray:
        wanted = {int(i) for i in indices}
        can_seek = self.fps > 0 and self.stream.time_base is not None
        try:
            out = self._decode(wanted, min(wanted) if can_seek else 0)
        except _NoTimestamps:
            out = self._decode(wanted, 0)  # counted from the start instead
        missing = sorted(wanted - out.keys())
        if missing:
            raise BadMedia("decode error", f"pyav: frames {missing[:4]} not decodable (file holds fewer frames)")
        return np.stack([out[int(i)] for i in indices])

    def close(self) -> None:
        self.container.close()


class _NoTimestamps(Exception):
    pass


class PyAVBackend(VideoBackend):
    name = "pyav"

    def open(self, path: str) -> VideoFile:
        return _PyAVFile(path)


# --------------------------------------------------------------------------------------------------
# torchcodec, auto
# --------------------------------------------------------------------------------------------------


class _TorchCodecFile(VideoFile):
    def __init__(self, decoder_cls, path: str) -> None:
        self.decoder = decoder_cls(path, dimension_order="NHWC", num_ffmpeg_threads=1, seek_mode="exact")
        self.num_frames = int(self.decoder.metadata.num_frames or 0)
        self.fps = float(self.decoder.metadata.average_fps or 0.0)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        return self.decoder.get_frames_at(indices=[int(i) for i in indices]).data.numpy()


class TorchCodecBackend(VideoBackend):
    name = "torchcodec"

    def __init__(self) -> None:
        try:
            from torchcodec.decoders import VideoDecoder
        except Exception as exc:  # ImportError, or its FFmpeg libraries failing to load
            raise VideoBackendUnavailable(
                f"data.video_backend = 'torchcodec' but torchcodec cannot be imported ({type(exc).__name__}: "
                f"{exc}); install it with its FFmpeg libraries, or use 'decord', 'pyav' or 'auto'") from exc
        self._decoder_cls = VideoDecoder

    def __getstate__(self) -> dict:
        return {}  # re-import in the worker

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def open(self, path: str) -> VideoFile:
        return _TorchCodecFile(self._decoder_cls, path)


class _FallbackFile(VideoFile):
    """decord's file; a read that fails is retried with PyAV on the same indices."""

    def __init__(self, primary: VideoFile, fallback: Callable[[], VideoFile], path: str) -> None:
        self.primary, self.fallback, self.path = primary, fallback, path
        self.num_frames, self.fps = primary.num_frames, primary.fps

    def read(self, indices: Sequence[int]) -> np.ndarray:
        try:
            return self.primary.read(indices)
        except Exception as exc:
            logger.debug("decord could not decode %s (%s); trying PyAV", self.path, exc)
        other = self.fallback()
        try:
            return other.read(indices)
        finally:
            other.close()

    def close(self) -> None:
        self.primary.close()


class AutoBackend(VideoBackend):
    """decord when installed, PyAV for what decord cannot open or decode."""

    name = "auto"

    def __init__(self) -> None:
        try:
            self.primary: VideoBackend | None = DecordBackend()
        except VideoBackendUnavailable:
            logger.info("decord is not installed: videos are decoded with PyAV")
            self.primary = None
        self.fallback = PyAVBackend()

    def open(self, path: str) -> VideoFile:
        if self.primary is None:
            return self.fallback.open(path)
        try:
            f = self.primary.open(path)
        except Exception as exc:
            logger.debug("decord could not open %s (%s); trying PyAV", path, exc)
            return self.fallback.open(path)
        return _FallbackFile(f, lambda: self.fallback.open(path), path)


_BACKENDS: dict[str, type[VideoBackend]] = {
    "auto": AutoBackend, "decord": DecordBackend, "pyav": PyAVBackend, "torchcodec": TorchCodecBackend}


def get_video_backend(name: str) -> VideoBackend:
    """"auto" | "decord" | "pyav" | "torchcodec" -> a backend; `VideoBackendUnavailable` if not installed."""
    if name not in _BACKENDS:
        raise ValueError(f"data.video_backend: unknown backend {name!r}; expected one of {sorted(_BACKENDS)}")
    return _BACKENDS[name]()


# --------------------------------------------------------------------------------------------------
# Frame counts, frame choice, reading
# --------------------------------------------------------------------------------------------------

_packet_cache: dict[tuple[str, int, int], int] = {}  # (path, size, mtime_ns) -> packets, per process


def count_packets(path: str | Path) -> int | None:
    """Number of video packets (= frames) the demuxer finds in `path`, reading the file but not decoding.

    None when PyAV cannot open it (the decoder will then report the real problem).
    """
    import av

    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _packet_cache:
        n = 0
        try:
            with av.open(str(path)) as c:
                if not c.streams.video:
                    return None
                for packet in c.demux(c.streams.video[0]):
                    n += packet.size > 0  # the demuxer ends with an empty flush packet
        except av.error.FFmpegError:
            if n == 0:
                return None  # a truncated tail just ends the count; no packet at all means unreadable
        _packet_cache[key] = n
    return _packet_cache[key]


def video_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of the first video stream, from the header (PyAV)."""
    import av

    check_file(path)
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise BadMedia("not a media file", "no video stream")
            cc = c.streams.video[0].codec_context
            return int(cc.height), int(cc.width)
    except av.error.FFmpegError as exc:
        raise BadMedia("decode error", f"pyav: {exc}") from None


def clip_offsets(count: int, *, stride: int = 1, src_fps: float = 0.0, fps: float | None = None) -> list[int]:
    """Source-frame offsets of a clip's `count` frames from its first: `stride` apart, or at `fps` from a
    source at `src_fps` (BadMedia when that is unknown)."""
    if fps is not None:
        if src_fps <= 0:
            raise BadMedia("decode error", "unknown frame rate, cannot sample at data.fps")
        step = src_fps / fps
    else:
        step = float(stride)
    return [math.floor(k * step + 0.5) for k in range(count)]


def video_frames(path: str | Path) -> tuple[int, float]:
    """(frame count, fps) of the first video stream from the header (PyAV; the packets counted where the
    header has no count); fps 0.0 when unknown."""
    import av

    check_file(path)
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise BadMedia("not a media file", "no video stream")
            st = c.streams.video[0]
            count, rate = int(st.frames or 0), st.average_rate or st.guessed_rate
    except av.error.FFmpegError as exc:
        raise BadMedia("decode error", f"pyav: {exc}") from None
    return count or (count_packets(path) or 0), float(rate or 0.0)


def sample_frame_indices(num_frames: int, count: int, *, stride: int = 1, src_fps: float = 0.0,
                         fps: float | None = None, start: Literal["random", "start"] = "random",
                         short: Literal["skip", "loop"] = "skip", generator: torch.Generator | None = None) -> list[int]:
    """`count` frame indices `stride` apart (or at `fps` when given, from a source at `src_fps`).

    The clip starts at a uniform offset drawn from `generator` ("random") or at 0 ("start"). A
    source too short raises BadMedia "too few frames: N < M" (short="skip") or is looped.
    """
    if num_frames <= 0:
        raise BadMedia("no frames", "0 decodable frames")
    offsets = clip_offsets(count, stride=stride, src_fps=src_fps, fps=fps)  # (T,) from the clip's first frame
    span = offsets[-1] + 1
    if span > num_frames:
        if short == "skip":
            raise BadMedia("too few frames", f"{num_frames} < {span}")
        return [o % num_frames for o in offsets]  # the clip played as an endless loop
    first = rand_below(num_frames - span + 1, generator) if start == "random" else 0
    return [first + o for o in offsets]


def read_video(path: str | Path, backend: VideoBackend, size: int | tuple[int, int], frames: int, *,
               stride: int = 1, fps: float | None = None, start: Literal["random", "start"] = "random",
               short: Literal["skip", "loop"] = "skip", crop: Crop = "center",
               generator: torch.Generator | None = None, verify_frames: bool = True) -> Tensor:
    """Read a clip as (3, T, H, W) float32 in [-1, 1]; every frame gets the same resize-and-crop window.

    Draws from `generator` in a fixed order (start offset, then crop), so (file, generator seed)
    fixes the result. Unusable files raise `BadMedia`.
    """
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    check_file(path)
    try:
        vf = backend.open(str(path))
    except BadMedia:
        raise
    except Exception as exc:
        raise BadMedia("decode error", f"{backend.name}: {type(exc).__name__}: {exc}") from None
    try:
        n = vf.num_frames
        if verify_frames:
            real = count_packets(path)
            n = n if real is None else min(n, real) if n > 0 else real
        idx = sample_frame_indices(n, frames, stride=stride, src_fps=vf.fps, fps=fps, start=start, short=short,
                                   generator=generator)
        try:
            arr = vf.read(idx)  # (T, h, w, 3) uint8
        except BadMedia:
            raise
        except Exception as exc:
            raise BadMedia("decode error", f"{backend.name}: {type(exc).__name__}: {exc}") from None
    finally:
        vf.close()
    if arr.ndim != 4 or arr.shape[0] != len(idx) or arr.shape[3] != 3:
        raise BadMedia("decode error", f"{backend.name} returned frames of shape {arr.shape}, expected ({len(idx)}, H, W, 3)")
    box = cover_box(arr.shape[1:3], hw, crop, generator)
    if tuple(arr.shape[1:3]) == hw and box == (0, 0, hw[1], hw[0]):
        return torch.from_numpy(arr).permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0)  # (3, T, H, W)
    return torch.stack([pil_to_tensor(resize_crop(Image.fromarray(a), hw, box=box)) for a in arr], dim=1)
