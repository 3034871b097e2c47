"""Videos: (3, T, H, W) clips, read through a VideoBackend (mmflow.data.video_reader), written as
H.264 MP4 with PyAV at the clip's frame rate (metadata as JSON in the comment tag), previewed as strips of frames.

    spec = get_modality("video")
    backend = spec.backend(cfg)                       # decord / PyAV / torchcodec, per cfg.video_backend
    clip, _ = spec.read(Path("a.mp4"), cfg, (64, 64), torch.Generator(), backend=backend)  # (3, T, 64, 64)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmflow.data.bad_items import BadMedia, check_file
from mmflow.data.video_reader import (VideoBackend, count_packets, get_video_backend, read_video, video_frames,
                                      video_size)
from mmflow.modalities.base import MediaMetadata, Modality, pad_to, register_modality
from mmflow.utils.images import save_image_grid
from mmflow.utils.media_io import read_mp4_metadata, write_mp4

__all__ = ["DEFAULT_FPS", "MAX_PREVIEW_CLIPS", "VideoModality"]

DEFAULT_FPS = 8.0  # a clip whose container or config gives no frame rate
MAX_PREVIEW_CLIPS = 4  # clips side by side in one preview row (each is a strip of all its frames)


@register_modality
class VideoModality(Modality):
    name = "video"
    extensions = ("mp4", "mov", "mkv", "webm", "avi", "m4v")
    suffix = ".mp4"
    crops = ("center", "random")
    latent_axes = 3
    size_keys = ("num_frames", "height", "width")
    sample_options = {"size": "size", "num_frames": "frames"}
    spatial = True
    item_files = True

    def media_shape(self, cfg: Any) -> tuple[int, ...]:
        return (3, cfg.frames, cfg.size, cfg.size)

    def header_size(self, path: str | os.PathLike) -> tuple[int, int]:
        return video_size(path)

    def header_frames(self, path: str | os.PathLike) -> tuple[int, float]:
        """(frame count, fps) from the header: what duration buckets assign clips by."""
        return video_frames(path)

    def backend(self, cfg: Any, override: VideoBackend | None = None) -> VideoBackend:
        return override or get_video_backend(cfg.video_backend)  # fails here if not installed

    def read(self, path: Path, cfg: Any, size: tuple[int, int], generator: torch.Generator, *,
             backend: Any = None, thorough: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        media = read_video(path, backend or self.backend(cfg), size, cfg.frames, stride=cfg.stride, fps=cfg.fps,
                           start=cfg.clip_start, short=cfg.short_clips, crop=cfg.crop_mode, generator=generator,
                           verify_frames=cfg.verify_frame_count)
        return media, {}

    def read_whole(self, path: Path, sample_rate: int | None = None, channels: int | None = None
                   ) -> tuple[Tensor, dict[str, Any]]:
        """Every frame (3, T, H, W) and its fps."""
        check_file(path)
        vf = get_video_backend("auto").open(str(path))
        try:
            real = count_packets(path)  # containers may over-report; decode only the frames really present
            n = vf.num_frames if real is None else min(vf.num_frames, real) if vf.num_frames > 0 else real
            if not n:
                raise BadMedia("no frames", "0 decodable frames")
            frames, fps = vf.read(list(range(n))), vf.fps or DEFAULT_FPS  # (T, H, W, 3) uint8
        finally:
            vf.close()
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float() / 127.5 - 1.0  # (3, T, H, W)
        t, h, w = x.shape[1:]
        return x, {"num_frames": t, "height": h, "width": w, "fps": fps}

    def read_file(self, path: Path, vae_config: Any) -> tuple[Tensor, dict[str, Any]]:
        """Every frame, the time axis padded (last frame repeated) to 1 + k * temporal factor."""
        x, info = self.read_whole(path)
        t = x.shape[1]
        tf, sf = vae_config.temporal_factor, vae_config.spatial_factor
        extra = -(t - 1) % tf
        if extra:
            x = torch.cat([x, x[:, -1:].expand(-1, extra, -1, -1)], dim=1)  # (3, 1 + k tf, H, W)
        return pad_to(x, (1, sf, sf)), info

    def write(self, media: Tensor, path: str | os.PathLike, *, fps: float | None = None,
              sample_rate: int | None = None, metadata: MediaMetadata | None = None) -> Path:
        return write_mp4(media, path, fps or DEFAULT_FPS, metadata=metadata)

    def read_metadata(self, path: str | os.PathLike) -> dict[str, Any]:
        """The JSON object in the MP4's comment tag (values keep their types)."""
        return read_mp4_metadata(path)

    def preview(self, media: Tensor, path: str | os.PathLike, labels: Sequence[str] | None = None,
                title: str = "") -> Path:
        """Media (R, K, 3, T, H, W): row r shows its first MAX_PREVIEW_CLIPS clips' frames side by side."""
        clips = media[:, :MAX_PREVIEW_CLIPS]
        r, k, c, t, h, w = clips.shape
        frames = clips.permute(0, 1, 3, 2, 4, 5).reshape(r, k * t, c, h, w)  # (R, K T, 3, H, W)
        return save_image_grid(frames, path, row_labels=labels, title=title)
