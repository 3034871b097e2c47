"""Audio: (C, N) waveforms at the recipe's sample rate, read with soundfile (mmflow.data.audio_reader),
written as WAV (or FLAC, by suffix) at that rate with metadata in a `<file>.json` sidecar, previewed as
waveform + spectrogram per clip.

    spec = get_modality("audio")
    wave, extras = spec.read(Path("a.flac"), cfg, (0, 0), torch.Generator())  # (C, N), {"mask": (N,), "timing": (2,)}
    spec.write(wave, "a.wav", sample_rate=cfg.sample_rate, metadata={"seed": 3})   # + a.wav.json
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmflow.data.audio_reader import prepare_audio, read_audio
from mmflow.data.bad_items import BadMedia, check_file
from mmflow.modalities.base import MediaMetadata, Modality, register_modality
from mmflow.utils.fs import write_json_atomic
from mmflow.utils.media_io import write_wav

__all__ = ["AudioModality", "sidecar_path", "spectrogram_db"]


def sidecar_path(path: str | os.PathLike) -> Path:
    """Where an audio file's metadata lives: `a.wav` -> `a.wav.json` (WAV and FLAC have no common tag set)."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def spectrogram_db(wave: Tensor, n_fft: int = 512) -> Tensor:
    """Mono waveform (N,) -> log-magnitude STFT (n_fft // 2 + 1, frames) in dB, peak at 0."""
    n_fft = max(16, min(n_fft, 1 << (max(wave.numel(), 2) - 1).bit_length()))  # short clips: a shorter window
    spec = torch.stft(wave.float(), n_fft, hop_length=n_fft // 4, window=torch.hann_window(n_fft),
                      return_complex=True, center=True).abs()
    db = 20 * torch.log10(spec.clamp_min(1e-5))
    return (db - db.max()).clamp_min(-80.0)  # an 80 dB range, as most spectrogram viewers show


@register_modality
class AudioModality(Modality):
    name = "audio"
    extensions = ("wav", "flac", "ogg", "mp3")
    suffix = ".wav"
    crops = ("random", "start")
    latent_axes = 1
    size_keys = ("num_samples",)
    sample_options = {"seconds": "seconds"}
    item_files = True

    def media_shape(self, cfg: Any) -> tuple[int, ...]:
        return (cfg.channels, round(cfg.sample_rate * cfg.seconds))

    def tokenizer_fields(self, cfg: Any) -> dict[str, Any]:
        return {"sample_rate": cfg.sample_rate, "channels": cfg.channels}

    def read(self, path: Path, cfg: Any, size: tuple[int, int], generator: torch.Generator, *,
             backend: Any = None, thorough: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        """(audio (C, N), {"mask": (N,) bool real samples, "timing": (2,) the window's start and the file's
        length in seconds: stable-audio's seconds_start / seconds_total})."""
        clip = read_audio(path, cfg.sample_rate, cfg.seconds, channels=cfg.channels, crop=cfg.crop_mode,
                          generator=generator, silence_threshold=cfg.silence_threshold, whole_file=thorough)
        return clip.audio, {"mask": clip.mask, "timing": torch.tensor([clip.start_seconds, clip.total_seconds])}

    def read_whole(self, path: Path, sample_rate: int | None = None, channels: int | None = None
                   ) -> tuple[Tensor, dict[str, Any]]:
        """The whole file (C, N), resampled to `sample_rate` and mixed to `channels` when given (else kept,
        but more than two channels are mixed to mono: mmflow knows mono and stereo)."""
        import soundfile as sf

        check_file(path)
        try:
            data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (N, C_src)
        except Exception as exc:  # soundfile.LibsndfileError (a RuntimeError), or TypeError on odd headers
            raise BadMedia("decode error", f"soundfile: {exc}") from None
        if data.shape[0] == 0:
            raise BadMedia("empty file", "0 audio samples")
        if not np.isfinite(data).all():
            raise BadMedia("non-finite audio", "NaN or Inf samples")
        wave = torch.from_numpy(np.ascontiguousarray(data.T))  # (C_src, N)
        out_rate = sample_rate or rate
        wave = prepare_audio(wave, rate, out_rate, channels or (wave.shape[0] if wave.shape[0] <= 2 else 1))
        return wave, {"num_samples": wave.shape[-1], "sample_rate": out_rate, "source_sample_rate": rate}

    def read_file(self, path: Path, vae_config: Any) -> tuple[Tensor, dict[str, Any]]:
        """The whole file, resampled and mixed to the tokenizer's rate and channels (the VAE pads to its hop)."""
        return self.read_whole(path, vae_config.sample_rate, vae_config.channels)

    def write(self, media: Tensor, path: str | os.PathLike, *, fps: float | None = None,
              sample_rate: int | None = None, metadata: MediaMetadata | None = None) -> Path:
        if sample_rate is None:
            raise ValueError(f"writing audio to {path} needs its sample_rate")
        out = write_wav(media, path, sample_rate)
        if metadata:
            write_json_atomic(sidecar_path(out), dict(metadata))
        else:  # a sidecar left by an earlier write of this name would describe other audio
            sidecar_path(out).unlink(missing_ok=True)
        return out

    def read_metadata(self, path: str | os.PathLike) -> dict[str, Any]:
        """The sidecar's JSON object (values keep their types); {} without a sidecar."""
        side = sidecar_path(path)
        return json.loads(side.read_text()) if side.is_file() else {}

    def preview(self, media: Tensor, path: str | os.PathLike, labels: Sequence[str] | None = None,
                title: str = "") -> Path:
        """Media (R, K, C, N): per clip its waveform (channels overlaid) above its spectrogram (channel mean);
        row r's label on its first clip. Axes count samples: the picture needs no sample rate."""
        import matplotlib

        matplotlib.use("Agg")  # files only, never a window
        import matplotlib.pyplot as plt

        r, k = media.shape[:2]
        x = media.detach().float().cpu().clamp(-1, 1)
        fig, axes = plt.subplots(2 * r, k, figsize=(3 * k, 2.4 * r), squeeze=False)
        for i in range(r):
            for j in range(k):
                wave_ax, spec_ax = axes[2 * i, j], axes[2 * i + 1, j]
                for ch in x[i, j]:
                    wave_ax.plot(ch.numpy(), linewidth=0.5)
                wave_ax.set_ylim(-1, 1)
                wave_ax.set_xticks([])
                spec_ax.imshow(spectrogram_db(x[i, j].mean(0)).numpy(), origin="lower", aspect="auto", cmap="magma")
                spec_ax.set_xticks([])
                spec_ax.set_yticks([])
            if labels is not None:
                axes[2 * i, 0].set_ylabel(labels[i][:24], fontsize=8)
        if title:
            fig.suptitle(title, fontsize=9)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(path, dpi=80)
        plt.close(fig)
        return path
