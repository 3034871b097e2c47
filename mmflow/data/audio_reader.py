"""Audio clips from files (soundfile: WAV, FLAC, OGG, MP3) to float tensors (C, N) plus a mask (N,).

Only the window that is kept is read from disk: `seconds` of the source at a random offset (drawn
from the item's generator) or at the start. It is mixed to mono (mean of the channels) or made
stereo (a mono source duplicated; of more channels the first two), resampled to the recipe's rate
with torchaudio.functional.resample, and cut or zero-padded to exactly N = round(seconds * rate)
samples; `mask` is True on the real samples. A window that holds NaN/Inf, or whose peak is at or
below `silence_threshold`, raises `BadMedia` (silence only for that window: `permanent=False`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from torch import Tensor

from mmflow.data.bad_items import BadMedia, check_file
from mmflow.data.image_reader import rand_below

__all__ = ["CHANNEL_NAMES", "AudioClip", "audio_info", "check_whole_file", "prepare_audio", "read_audio"]

logger = logging.getLogger("mmflow.data")
_logged_rates: set[tuple[int, int]] = set()  # (source rate, target rate) pairs already announced
CHANNEL_NAMES = {1: "mono", 2: "stereo"}


@dataclass
class AudioClip:
    """audio (C, N) float32, mask (N,) bool (True = real samples, False = zero padding); where the window
    starts in the file and how long the file is, in seconds."""

    audio: Tensor
    mask: Tensor
    start_seconds: float = 0.0
    total_seconds: float = 0.0


def audio_info(path: str | Path) -> tuple[int, int, int]:
    """(frames, sample rate, channels) from the header; `BadMedia` when soundfile cannot read it."""
    check_file(path)
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile.LibsndfileError (a RuntimeError), or TypeError on odd headers
        raise BadMedia("decode error", f"soundfile: {exc}") from None
    return int(info.frames), int(info.samplerate), int(info.channels)


def _log_rate(src: int, dst: int) -> None:
    if (src, dst) not in _logged_rates:
        _logged_rates.add((src, dst))
        logger.info("resampling audio from %d Hz to %d Hz (logged once per source rate)", src, dst)


def check_whole_file(path: str | Path, silence_threshold: float = 1e-4, block: int = 1 << 16) -> None:
    """`BadMedia` if any sample of `path` is NaN/Inf or the whole file is at or below `silence_threshold`."""
    peak = 0.0
    try:
        for x in sf.blocks(str(path), blocksize=block, dtype="float32", always_2d=True):  # (block, C)
            if not np.isfinite(x).all():
                raise BadMedia("non-finite audio", "NaN or Inf samples in the file")
            peak = max(peak, float(np.abs(x).max(initial=0.0)))
    except BadMedia:
        raise
    except Exception as exc:
        raise BadMedia("decode error", f"soundfile: {exc}") from None
    if peak <= silence_threshold:
        raise BadMedia("silent audio", f"whole file peak {peak:.3g} <= data.silence_threshold {silence_threshold:g}")


def read_audio(path: str | Path, sample_rate: int, seconds: float, *, channels: Literal[1, 2] = 1,
               crop: Literal["random", "start"] = "random", generator: torch.Generator | None = None,
               silence_threshold: float = 1e-4, whole_file: bool = False) -> AudioClip:
    """Read `seconds` of `path` as AudioClip(audio (channels, N), mask (N,)), N = round(seconds * sample_rate).

    `whole_file`: also check every sample of the file (`check_whole_file`), not only the window
    read; for scans before training, where a NaN outside today's window still marks a broken file.
    """
    frames, src_rate, _ = audio_info(path)
    if frames <= 0:
        raise BadMedia("empty file", "0 audio samples")
    if whole_file:
        check_whole_file(path, silence_threshold)
    n_out = round(seconds * sample_rate)
    n_src = min(frames, math.ceil(seconds * src_rate))  # source samples that cover the window
    start = rand_below(frames - n_src + 1, generator) if crop == "random" else 0
    try:
        data, _ = sf.read(str(path), start=start, frames=n_src, dtype="float32", always_2d=True)  # (n, C_src)
    except Exception as exc:
        raise BadMedia("decode error", f"soundfile: {exc}") from None
    if data.shape[0] == 0:
        raise BadMedia("empty file", "0 audio samples could be read")
    if not np.isfinite(data).all():
        raise BadMedia("non-finite audio", f"NaN or Inf among samples {start}..{start + data.shape[0]}")
    peak = float(np.abs(data).max())
    if peak <= silence_threshold:
        raise BadMedia("silent audio", f"peak {peak:.3g} <= data.silence_threshold {silence_threshold:g}",
                       permanent=False)
    x = torch.from_numpy(np.ascontiguousarray(data.T))  # (C_src, n)
    if channels == 1:
        x = x.mean(dim=0, keepdim=True)  # (1, n)
    elif x.shape[0] == 1:
        x = x.expand(2, -1)  # (2, n) mono duplicated
    else:
        x = x[:2]  # (2, n): front left/right in the usual channel orders
    real = x.shape[1]
    if src_rate != sample_rate:
        _log_rate(src_rate, sample_rate)
        x = AF.resample(x.contiguous(), src_rate, sample_rate)  # (C, ~n * rate / src_rate)
        real = min(x.shape[1], round(real * sample_rate / src_rate))
    real = min(real, n_out)
    audio = torch.zeros(x.shape[0], n_out, dtype=torch.float32)
    audio[:, :real] = x[:, :real]
    mask = torch.zeros(n_out, dtype=torch.bool)
    mask[:real] = True
    return AudioClip(audio, mask, start / src_rate, frames / src_rate)


def prepare_audio(wave: Tensor, sample_rate: int, target_sample_rate: int, channels: int) -> Tensor:
    """A whole waveform as a tokenizer takes it: resample (torchaudio.functional.resample) and mix/duplicate channels: (..., C, N) -> (..., channels, N').

    Mono from many channels is their mean; stereo from mono duplicates it. Other channel changes raise.
    """
    if wave.ndim not in (2, 3):
        raise ValueError(f"prepare_audio expects (C, N) or (B, C, N), got shape {tuple(wave.shape)}")
    if channels not in CHANNEL_NAMES:
        raise ValueError(f"prepare_audio: channels must be 1 (mono) or 2 (stereo), got {channels}")
    if sample_rate <= 0 or target_sample_rate <= 0:
        raise ValueError(f"prepare_audio: sample rates must be positive, got {sample_rate} -> {target_sample_rate}")
    c = wave.shape[-2]
    if c != channels:
        if channels == 1:
            logger.info("mixing %d channels down to mono", c)
            wave = wave.mean(dim=-2, keepdim=True)
        elif c == 1:
            logger.info("duplicating mono audio to %d channels", channels)
            wave = wave.expand(*wave.shape[:-2], channels, wave.shape[-1]).contiguous()
        else:
            raise ValueError(f"prepare_audio: cannot turn {c}-channel audio into {CHANNEL_NAMES[channels]}; "
                             "only mixing down to mono or duplicating mono is supported")
    if sample_rate != target_sample_rate:
        logger.info("resampling audio from %d Hz to %d Hz", sample_rate, target_sample_rate)
        wave = AF.resample(wave.float(), sample_rate, target_sample_rate)
    return wave
