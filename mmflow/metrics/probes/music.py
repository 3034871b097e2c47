"""The music probe: key (12 pitch classes), mode (major/minor) and instrument (12) of 4 s mono clips.

Trained on ../shared/data/music16k. One STFT (4096 points, hop 512 at 16 kHz) feeds two branches:
- timbre: a 64-band log-mel spectrogram, two 1-D convolutions over time, mean/std pooling, a hidden
  layer -> the instrument head;
- tonality: the STFT folded into 12 pitch classes (a chroma: each bin weighted by how close it lies
  to an equal-tempered semitone) summed into three profiles: the whole clip, its first 0.5 s (the
  melodies start on the tonic) and the band below 300 Hz (bass and chord roots). One small MLP
  scores each of the 12 rotations of the profiles as "tonic here, major" / "tonic here, minor":
  the score of key k is the same function of the profiles rolled by k, so the probe is exactly
  transposition-equivariant and learns one key template from clips in all keys (a learned
  Krumhansl-Schmuckler). key = logsumexp over modes, mode = logsumexp over tonics.
features = [timbre hidden, tonal hidden max-pooled over the 12 rotations] (B, feature_dim).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import Tensor, nn

from mmflow.metrics.probes.base import Probe, ProbeConfig, ProbeInputError
from mmflow.model_io import register_model

__all__ = ["INSTRUMENTS", "KEYS", "MODES", "MusicProbe", "chroma_fold", "music_config", "pitch_class", "read_wave"]

KEYS = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
MODES = ["major", "minor"]
INSTRUMENTS = ["piano", "electric piano", "organ", "acoustic guitar", "electric bass", "violin", "cello", "trumpet",
               "flute", "clarinet", "marimba", "choir"]
SAMPLE_RATE = 16000
NUM_SAMPLES = 64000  # 4 s
N_FFT = 4096
HOP = 512
N_MELS = 64
BASS_MAX_HZ = 300.0
START_SECONDS = 0.5
_LETTERS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def pitch_class(name: str) -> int:
    """'C' -> 0, 'C#' / 'Db' -> 1, ..., 'B' -> 11 (enharmonic spellings are one class)."""
    if not name or name[0].upper() not in _LETTERS or any(c not in "#b" for c in name[1:]):
        raise ProbeInputError(f"{name!r} is not a key name (a letter A-G, then any '#' or 'b')")
    return (_LETTERS[name[0].upper()] + name.count("#") - name.count("b")) % 12


def music_config(**overrides) -> ProbeConfig:
    """The config of a fresh music probe (overrides: width, feature_dim, ...)."""
    base = dict(name="music", modality="audio", media_shape=[1, NUM_SAMPLES], sample_rate=SAMPLE_RATE,
                attributes={"key": list(KEYS), "mode": list(MODES), "instrument": list(INSTRUMENTS)},
                width=64, feature_dim=128)
    base.update(overrides)
    return ProbeConfig(**base)


def read_wave(path: Path) -> Tensor:
    """The first 4 s of a clip as (1, 64000) mono at 16 kHz in [-1, 1] (mmflow's audio reader)."""
    from mmflow.data.audio_reader import read_audio

    return read_audio(path, SAMPLE_RATE, NUM_SAMPLES / SAMPLE_RATE, crop="start").audio


def chroma_fold(n_freqs: int, sample_rate: int, f_min: float = 50.0, f_max: float = 5000.0) -> Tensor:
    """(n_freqs, 12) weights: STFT bin -> pitch class, 1 at an equal-tempered semitone, 0 half-way between."""
    freqs = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)
    semis = 12 * torch.log2(freqs.clamp(min=1e-3) / 440.0) + 69  # MIDI number of each bin
    nearest = semis.round()
    weight = (1 - 2 * (semis - nearest).abs()).clamp(min=0) * ((freqs >= f_min) & (freqs <= f_max))
    fold = torch.zeros(n_freqs, 12, dtype=torch.float64)
    fold[torch.arange(n_freqs), (nearest.long() % 12)] = weight
    return fold.float()


@register_model("probe_music")
class MusicProbe(Probe):
    """Clips (B, 1, 64000) at 16 kHz in [-1, 1] -> key (B, 12), mode (B, 2), instrument (B, 12) logits."""

    def __init__(self, config: ProbeConfig) -> None:
        super().__init__(config)
        if list(config.attributes) != ["key", "mode", "instrument"]:
            raise ProbeInputError(f"a music probe's attributes are key, mode, instrument; got {list(config.attributes)}")
        w, half = config.width, config.feature_dim // 2
        n_freqs = N_FFT // 2 + 1
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)
        self.register_buffer("mel", AF.melscale_fbanks(n_freqs, 30.0, SAMPLE_RATE / 2, N_MELS, SAMPLE_RATE,
                                                       norm="slaney", mel_scale="slaney"), persistent=False)
        fold = chroma_fold(n_freqs, SAMPLE_RATE)
        freqs = torch.linspace(0, SAMPLE_RATE / 2, n_freqs)
        self.register_buffer("fold", fold, persistent=False)
        self.register_buffer("bass_fold", fold * (freqs <= BASS_MAX_HZ)[:, None], persistent=False)
        # timbre branch
        self.conv1 = nn.Conv1d(N_MELS, w, 5, stride=2, padding=2)
        self.conv2 = nn.Conv1d(w, w, 5, stride=2, padding=2)
        self.timbre = nn.Linear(2 * w, half)
        self.instrument = nn.Linear(half, len(INSTRUMENTS))
        # tonal branch: one MLP shared by the 12 rotations of the 3 profiles
        self.tonal = nn.Sequential(nn.Linear(3 * 12, half), nn.GELU(), nn.Linear(half, half), nn.GELU())
        self.key_mode = nn.Linear(half, len(MODES))

    def prepare(self, media: Tensor) -> dict[str, Tensor]:
        """(B, 1, N) -> {"mel": (B, 64, F) log-mel, mean 0 per clip; "profiles": (B, 3, 12), each summing to 12}."""
        x = media.float()[:, 0]  # (B, N)
        spec = torch.stft(x, N_FFT, HOP, window=self.window, return_complex=True).abs()  # (B, n_freqs, F)
        mel = torch.log((spec.pow(2).transpose(1, 2) @ self.mel).transpose(1, 2) + 1e-6)  # (B, 64, F)
        mel = mel - mel.mean(dim=(1, 2), keepdim=True)  # loudness-free
        chroma = (spec.transpose(1, 2) @ self.fold).transpose(1, 2)  # (B, 12, F)
        start = max(1, round(START_SECONDS * SAMPLE_RATE / HOP))
        bass = (spec.transpose(1, 2) @ self.bass_fold).sum(dim=1)  # (B, 12)
        profiles = torch.stack([chroma.sum(dim=2), chroma[:, :, :start].sum(dim=2), bass], dim=1)  # (B, 3, 12)
        profiles = 12 * profiles / profiles.sum(dim=2, keepdim=True).clamp(min=1e-8)
        return {"mel": mel, "profiles": profiles}

    def _timbre(self, mel: Tensor) -> Tensor:
        h = F.gelu(self.conv2(F.gelu(self.conv1(mel))))  # (B, w, F / 4)
        return F.gelu(self.timbre(torch.cat([h.mean(dim=2), h.std(dim=2)], dim=1)))  # (B, feature_dim / 2)

    def _tonal(self, profiles: Tensor) -> Tensor:
        """(B, 3, 12) -> (B, 12 tonics, half): the MLP on the profiles rolled so each tonic is at 0. (Feeding
        it the timbre too, for instruments whose overtones colour the chroma, overfitted: no better on key
        and mode together.)"""
        idx = (torch.arange(12, device=profiles.device)[:, None] + torch.arange(12, device=profiles.device)) % 12
        rolled = profiles[:, :, idx].permute(0, 2, 1, 3).flatten(2)  # (B, 12 tonics, 36): [k, (p, j)] = profile p[(k + j) % 12]
        return self.tonal(rolled)  # (B, 12, half)

    def embed(self, prepared: dict[str, Tensor]) -> Tensor:
        tonal = self._tonal(prepared["profiles"]).amax(dim=1)  # (B, half): the same for any transposition
        return torch.cat([self._timbre(prepared["mel"]), tonal], dim=1)  # (B, feature_dim)

    def prepared_logits(self, prepared: dict[str, Tensor]) -> dict[str, Tensor]:
        timbre = self._timbre(prepared["mel"])  # (B, half)
        joint = self.key_mode(self._tonal(prepared["profiles"]))  # (B, 12 tonics, 2 modes)
        return {"key": joint.logsumexp(dim=2), "mode": joint.logsumexp(dim=1), "instrument": self.instrument(timbre)}
