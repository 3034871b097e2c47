"""Audio features: a weight-free log-mel embedding ("mel") and any local TorchScript audio encoder
("audio_torchscript", e.g. a VGGish port for FAD).

    feats = get_features("mel")                      # 16 kHz, 64 bands: (B, C, N) -> (B, 128)
    feats = get_features("mel", deltas=True)         # + mean/std of the frame-to-frame change: (B, 256)
    feats = get_features("audio_torchscript", path="weights/vggish.pt", sample_rate=16000)

mel: mono (channel mean), STFT with a 25 ms Hann window and a 10 ms hop, power spectrum through 64 HTK
mel filters (torchaudio.functional.melscale_fbanks, 0 Hz to Nyquist), log(mel + 1e-6); the features
are the per-band mean and standard deviation over frames, optionally those of the first difference
over time. Like "pixels", it has no learned weights: a Frechet distance on it tracks drift between
runs, it is NOT comparable to FAD numbers from VGGish / PANNs.

audio_torchscript: `net(wave)` with wave (B, N) mono float in [-1, 1] at `sample_rate` must return
(B, D) or (B, K, D) (per-window embeddings, averaged here into one vector per clip; FAD as published
pools windows from all clips instead, so per-clip means give a different, smoother number). The
module must hold its own front end (VGGish's log-mel examples, for instance): wrap it in an
nn.Module taking waveforms and torch.jit.script/trace it. D is found by running it once on 1 s of
silence.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from mmflow.metrics.features.base import FeatureExtractor, register_features
from mmflow.config import ConfigError
from mmflow.metrics.features.weights import WrongWeights, file_sha256, load_torchscript, require_path

__all__ = ["MelFeatures", "TorchScriptAudioFeatures"]


class MelFeatures(FeatureExtractor):
    """(B, C, N) in [-1, 1] at sample_rate -> (B, 2 * n_mels) log-mel mean and std (x 2 with deltas)."""

    name = "mel"
    modality = "audio"

    def __init__(self, sample_rate: int = 16000, n_mels: int = 64, deltas: bool = False) -> None:
        super().__init__()
        from torchaudio.functional import melscale_fbanks

        self.sample_rate, self.n_mels, self.deltas = sample_rate, n_mels, deltas
        self.n_fft, self.hop = round(0.025 * sample_rate), round(0.010 * sample_rate)
        self.dim = 2 * n_mels * (2 if deltas else 1)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        fb = melscale_fbanks(self.n_fft // 2 + 1, 0.0, sample_rate / 2, n_mels, sample_rate, norm=None, mel_scale="htk")
        self.register_buffer("fbanks", fb, persistent=False)  # (n_fft // 2 + 1, n_mels)

    def log_mel(self, media: Tensor) -> Tensor:
        """(B, C, N) -> (B, frames, n_mels) log mel power."""
        mono = media.float().mean(1)  # (B, N)
        spec = torch.stft(mono, self.n_fft, self.hop, window=self.window, center=True, pad_mode="constant",
                          return_complex=True)  # (B, n_fft // 2 + 1, frames); constant padding: any length works
        return torch.log(spec.abs().square().transpose(1, 2) @ self.fbanks + 1e-6)  # (B, frames, n_mels)

    def forward(self, media: Tensor) -> Tensor:
        mel = self.log_mel(media)
        parts = [mel.mean(1), mel.std(1, correction=0)]
        if self.deltas:
            d = mel.diff(dim=1) if mel.shape[1] > 1 else torch.zeros_like(mel)  # (B, frames - 1, n_mels)
            parts += [d.mean(1), d.std(1, correction=0)]
        return torch.cat(parts, dim=1)  # (B, dim)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "sample_rate": self.sample_rate, "n_mels": self.n_mels,
                "deltas": self.deltas}


class TorchScriptAudioFeatures(FeatureExtractor):
    """(B, C, N) at sample_rate -> (B, D) from a TorchScript encoder of mono waveforms (B, N)."""

    name = "audio_torchscript"
    modality = "audio"

    def __init__(self, net: torch.jit.ScriptModule, sample_rate: int, weights_sha256: str | None = None,
                 source: str = "the audio TorchScript") -> None:
        super().__init__()
        self.net, self.sample_rate, self.weights_sha256, self.source = net, sample_rate, weights_sha256, source
        self.dim = 0
        with torch.no_grad():
            self.dim = self.forward(torch.zeros(1, 1, sample_rate)).shape[1]

    def forward(self, media: Tensor) -> Tensor:
        out = self.net(media.float().mean(1))  # (B, D) or (B, K, D)
        if not isinstance(out, Tensor) or out.ndim not in (2, 3) or out.shape[0] != media.shape[0]:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise WrongWeights(f"{self.source}: returned {got} for {media.shape[0]} clips; "
                               "it must return (B, D) or (B, K, D) tensors")
        return (out.mean(1) if out.ndim == 3 else out).float()  # (B, D)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "sample_rate": self.sample_rate,
                "weights_sha256": self.weights_sha256}


@register_features("mel")
def _mel(path: str | os.PathLike | None = None, sample_rate: int = 16000, n_mels: int = 64,
         deltas: bool = False) -> MelFeatures:
    if path:
        raise WrongWeights(f"{path}: the 'mel' features use no weights; pass no path")
    return MelFeatures(sample_rate, n_mels, deltas)


@register_features("audio_torchscript")
def _audio_torchscript(path: str | os.PathLike | None = None, sample_rate: int | None = None
                       ) -> TorchScriptAudioFeatures:
    file = require_path(path, "audio encoder TorchScript file",
                        "script a VGGish-style encoder of waveforms with torch.jit and copy the file here")
    if not sample_rate:
        raise ConfigError(f"{file}: audio_torchscript needs sample_rate= (the rate the encoder was trained at, "
                             "e.g. 16000 for VGGish)")
    return TorchScriptAudioFeatures(load_torchscript(file, "audio encoder"), int(sample_rate), file_sha256(file),
                                    str(file))
