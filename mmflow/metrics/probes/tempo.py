"""A rule-based tempo estimate: onset-strength envelope -> autocorrelation -> the best beat period.

No learning: the onset strength is the positive spectral flux of a log-mel spectrogram (how much
louder each band got since the previous frame), its autocorrelation peaks at the beat period and
its multiples, and each candidate tempo in 60..180 bpm is scored by the autocorrelation at its
period, the next multiples and half the period (a comb, `COMB`), times a log-normal prior around
120 bpm (one octave wide, as librosa's beat tracker does). Octave errors (half or double the tempo) are the typical failure;
`tempo_errors` reports them apart from the absolute error.

    bpm = estimate_tempo(wave, 16000)         # wave (N,) or (C, N) in [-1, 1] -> e.g. 117.8
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torchaudio.functional as AF
from torch import Tensor

from mmflow.metrics.probes.base import ProbeInputError

__all__ = ["BPM_RANGE", "TempoErrors", "estimate_tempo", "onset_envelope", "tempo_errors"]

BPM_RANGE = (60.0, 180.0)
FRAME_RATE = 250.0  # onset-envelope frames per second (4 ms: 1 bpm at 120 bpm is a 4 ms period change)
PRIOR_CENTRE = 120.0
# (multiple of the beat period, weight): the beat, its multiples (1/m) and half the beat: melodies play
# eighths more often than dotted values, which is what tells the beat from 2/3 or 3/2 of it (weighted
# low: more makes half of a fast click track's tempo score as high as the tempo itself)
COMB = ((0.5, 0.25), (1, 1.0), (2, 1 / 2), (3, 1 / 3), (4, 1 / 4))
OCTAVE_TOLERANCE = 0.04  # an estimate within 4% of half or double the truth is an octave error


def onset_envelope(wave: Tensor, sample_rate: int) -> tuple[Tensor, float]:
    """wave (N,) -> (onset strength (F,) >= 0, frames per second)."""
    hop = max(1, round(sample_rate / FRAME_RATE))
    n_fft = 4 * 2 ** round(torch.log2(torch.tensor(sample_rate * 0.016)).item())  # ~64 ms window
    spec = torch.stft(wave.float(), n_fft, hop, window=torch.hann_window(n_fft), return_complex=True).abs().pow(2)
    fb = AF.melscale_fbanks(n_fft // 2 + 1, 30.0, sample_rate / 2, 40, sample_rate)  # (n_freqs, 40)
    mel = torch.log1p(1000 * (spec.T @ fb))  # (F, 40) log-compressed band energies
    flux = (mel[1:] - mel[:-1]).clamp(min=0).sum(dim=1)  # (F - 1,)
    return flux, sample_rate / hop


def estimate_tempo(wave: Tensor, sample_rate: int, bpm_range: tuple[float, float] = BPM_RANGE) -> float:
    """Tempo in bpm of a clip wave (N,) or (C, N) (channels are averaged), within `bpm_range`."""
    if wave.ndim == 2:
        wave = wave.mean(dim=0)
    if wave.ndim != 1:
        raise ProbeInputError(f"estimate_tempo takes a wave (N,) or (C, N), got shape {tuple(wave.shape)}")
    env, fps = onset_envelope(wave, sample_rate)
    env = env - env.mean()
    n = len(env)
    if n < 4 * fps * 60 / bpm_range[1]:
        raise ProbeInputError(f"estimate_tempo needs at least {4 * 60 / bpm_range[1]:.2f} s of audio, got {len(wave) / sample_rate:.2f} s")
    spec = torch.fft.rfft(env.double(), 2 * n)
    acf = torch.fft.irfft(spec.abs().pow(2), 2 * n)[:n]  # (n,) autocorrelation at lags 0..n-1
    acf = acf / (n - torch.arange(n, dtype=torch.float64))  # unbiased: fewer overlapping frames at long lags
    acf = acf / acf[0].clamp(min=1e-12)
    bpms = torch.arange(bpm_range[0], bpm_range[1] + 1e-9, 0.05, dtype=torch.float64)  # (K,)
    score = torch.zeros_like(bpms)
    for m, weight in COMB:
        lag = m * 60.0 * fps / bpms  # (K,) fractional lag of m beats
        ok = lag < n / 2  # lags with enough overlap to trust
        lo = lag.floor().long().clamp(max=n - 2)
        frac = lag - lo
        value = acf[lo] * (1 - frac) + acf[lo + 1] * frac  # (K,) linear interpolation
        score += torch.where(ok, value, torch.zeros_like(value)) * weight
    prior = torch.exp(-0.5 * torch.log2(bpms / PRIOR_CENTRE) ** 2)
    return float(bpms[torch.argmax(score.clamp(min=0) * prior)])


@dataclass
class TempoErrors:
    """Estimate vs truth over a set of clips (bpm)."""

    mean_abs_error: float  # over all clips
    octave_errors: float  # fraction of clips estimated at about half or double the tempo
    mean_abs_error_no_octave: float  # over the clips that are not octave errors
    within_2_bpm: float  # fraction of clips estimated within 2 bpm
    count: int


def tempo_errors(estimates: Sequence[float], truths: Sequence[float]) -> TempoErrors:
    """Absolute errors, with estimates within 4% of half or double the truth counted as octave errors."""
    est, true = torch.tensor(list(estimates), dtype=torch.float64), torch.tensor(list(truths), dtype=torch.float64)
    err = (est - true).abs()
    octave = ((est - 2 * true).abs() <= OCTAVE_TOLERANCE * 2 * true) | ((est - true / 2).abs() <= OCTAVE_TOLERANCE * true / 2)
    rest = err[~octave]
    return TempoErrors(float(err.mean()), float(octave.double().mean()),
                       float(rest.mean()) if len(rest) else float("nan"), float((err <= 2.0).double().mean()), len(est))
