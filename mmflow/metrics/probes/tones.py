"""The tones probe: is what a clip plays what its tones prompt (mmflow.data.tones) asked for?

Rules where a rule is exact, a small classifier where it is not:
- f0: YIN (the cumulative-mean-normalised difference function, its first dip under YIN_THRESHOLD,
  parabolic interpolation) on 32 ms frames every 16 ms; a frame is voiced when it is periodic enough
  (aperiodicity < VOICED_APERIODICITY) and not near-silent. Notes are runs of voiced frames of one
  pitch class, at least MIN_RUN frames long;
- pitch: the first note's pitch class (nearest semitone; every clip starts on its tonic) is the key's
  tonic (an octave error of the f0 does not change it);
- mode: the 3rd above that tonic: frames on the major 3rd (4 semitones) against frames on the minor 3rd
  (3); scale and arpeggio prompts only;
- pattern: how many pitch classes the notes play: one (note), two or three (arpeggio), four or more (scale);
- tempo: mmflow.metrics.probes.tempo.estimate_tempo within TEMPO_TOLERANCE of the asked bpm;
- timbre: a small MLP on pitch-normalised features (the first N_HARMONICS harmonic amplitudes in dB
  against the fundamental, their spread over frames, how they and the loudness change over a note),
  trained on clips of the generated train split, half of them noised, low-passed or mu-law coded, and
  as many clips of each EXTRA_TIMBRES timbre (the organ, which only fine-tuning concepts play), so a model
  that plays an old prompt with the new timbre is caught.

    score = score_tones(waves, captions)      # waves (B, 1, N) or (B, N) in [-1, 1] at 16 kHz
    score["all"], score["items"][0]           # accuracies; per-item predictions and correctness

Retrain (about a minute on one CPU core; no data folder needed, the set is generated):

    python -m mmflow.metrics.probes.train_tones --out checkpoints/probes/tones
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.signal import butter, sosfilt
from torch import Tensor, nn

from mmflow.data.tones import (ALL_TIMBRES, EXTRA_TIMBRES, KEYS, MODES, NUM_SAMPLES, PATTERNS, SAMPLE_RATE, TIMBRES,
                               ToneItem, TonePrompt, TonesConfig, make_tones, parse_caption)
from mmflow.metrics.probes.base import Probe, ProbeConfig, ProbeInputError, fraction, load_probe
from mmflow.metrics.probes.tempo import estimate_tempo
from mmflow.model_io import register_model

__all__ = ["MIN_SECONDS", "N_FEATURES", "ToneAnalysis", "TonesProbe", "analyse", "degrade", "score_tones", "tones_config", "train_tones_probe",
           "yin"]

logger = logging.getLogger("mmflow.probes")

FRAME = 512  # samples (32 ms): YIN's integration window
HOP = 256  # samples (16 ms) between frames
F0_RANGE = (50.0, 1200.0)  # Hz the f0 search covers (the set plays 131..988 Hz)
YIN_THRESHOLD = 0.15  # first dip of the normalised difference under this is the period
VOICED_APERIODICITY = 0.3  # frames whose best dip is higher are noise or silence
SILENCE = 0.05  # frames quieter than this fraction of the clip's loudest frame (RMS) are silence
MIN_RUN = 3  # frames (48 ms): shorter runs of one pitch class are transients, not notes
PATTERN_SHARE = 0.04  # a pitch class counts for the pattern if it holds this share of the note frames
TEMPO_TOLERANCE = 0.05  # relative
MIN_SECONDS = 1.5  # shortest clip scored: a few notes at the slowest tempo, enough for pattern and tempo
N_HARMONICS = 12
SPECTRUM = 4096  # zero-padded FFT length of the harmonic analysis (3.9 Hz bins)
FLOOR_DB = -60.0  # harmonic amplitudes are clipped here (and harmonics above Nyquist read as it)
N_FEATURES = 3 * N_HARMONICS + 1


def yin(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """wave (N,) -> per frame (F,): f0 in Hz, aperiodicity (the normalised difference at the period; 0 is
    perfectly periodic), RMS. Frame f covers samples [f * HOP, f * HOP + FRAME + max lag)."""
    tau_min, tau_max = int(sample_rate / F0_RANGE[1]), int(np.ceil(sample_rate / F0_RANGE[0]))
    span = FRAME + tau_max + 1
    x = np.pad(np.asarray(wave, dtype=np.float64), (0, span))
    n_frames = max(1, (len(wave) - FRAME) // HOP + 1)
    idx = np.arange(n_frames)[:, None] * HOP + np.arange(span)[None, :]
    frames = x[idx]  # (F, span)
    size = 1 << int(np.ceil(np.log2(2 * span)))
    spec = np.fft.rfft(frames, size)
    head = np.fft.rfft(frames[:, :FRAME], size)
    r = np.fft.irfft(np.conj(head) * spec, size)[:, : tau_max + 2]  # (F, T): sum_j x_j x_{j+tau}, j < FRAME
    sq = np.concatenate([np.zeros((n_frames, 1)), np.cumsum(frames ** 2, axis=1)], axis=1)
    lags = np.arange(tau_max + 2)
    energy = sq[:, lags + FRAME] - sq[:, lags]  # (F, T): sum_j x_{j+tau}^2
    d = np.maximum(energy[:, :1] + energy - 2 * r, 0.0)  # (F, T) the difference function
    cum = np.cumsum(d[:, 1:], axis=1)
    cmnd = np.ones_like(d)
    cmnd[:, 1:] = d[:, 1:] * lags[1:] / np.maximum(cum, 1e-12)
    body = cmnd[:, tau_min: tau_max + 1]  # (F, K) candidate lags
    dip = np.zeros_like(body, dtype=bool)
    dip[:, 1:-1] = (body[:, 1:-1] < body[:, :-2]) & (body[:, 1:-1] <= body[:, 2:]) & (body[:, 1:-1] < YIN_THRESHOLD)
    k = np.where(dip.any(1), dip.argmax(1), body.argmin(1))  # the first dip under the threshold, else the best
    k = np.clip(k, 1, body.shape[1] - 2)
    rows = np.arange(n_frames)
    a, b, c = body[rows, k - 1], body[rows, k], body[rows, k + 1]
    curve = a - 2 * b + c
    safe = np.abs(curve) > 1e-12
    shift = np.where(safe, 0.5 * (a - c) / np.where(safe, curve, 1.0), 0.0)  # the parabola's vertex
    tau = tau_min + k + np.clip(shift, -0.5, 0.5)
    rms = np.sqrt(sq[:, FRAME] / FRAME)
    return sample_rate / tau, b, rms


@dataclass
class ToneAnalysis:
    """What the rules read from one clip, and the timbre classifier's input."""

    notes: list[tuple[int, int, float]]  # (first frame, frame count, MIDI number (float, median of the run))
    pitch_classes: np.ndarray  # (12,) share of note frames on each pitch class
    tonic: int | None  # pitch class of the first note; None when no note was found
    features: np.ndarray  # (N_FEATURES,) float32: the timbre features (zeros when no note was found)

    @property
    def third(self) -> str | None:
        """'major' / 'minor': which 3rd above the tonic sounds longer (None: neither, or no tonic)."""
        if self.tonic is None:
            return None
        major, minor = self.pitch_classes[(self.tonic + 4) % 12], self.pitch_classes[(self.tonic + 3) % 12]
        return "major" if major > minor else "minor" if minor > major else None

    @property
    def pattern(self) -> str | None:
        n = int((self.pitch_classes >= PATTERN_SHARE).sum())
        return None if n == 0 else "note" if n == 1 else "arpeggio" if n <= 3 else "scale"


def _runs(keep: np.ndarray, pcs: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of the maximal runs of consecutive kept frames with one pitch class, >= MIN_RUN long."""
    out, start = [], None
    for f in range(len(keep) + 1):
        same = f < len(keep) and keep[f] and start is not None and pcs[f] == pcs[start]
        if start is not None and not same:
            if f - start >= MIN_RUN:
                out.append((start, f - start))
            start = None
        if start is None and f < len(keep) and keep[f]:
            start = f
    return out


def _harmonics(wave: np.ndarray, frames: np.ndarray, f0: np.ndarray, sample_rate: int) -> np.ndarray:
    """(len(frames), N_HARMONICS) amplitudes in dB against the strongest harmonic, clipped at FLOOR_DB: the
    peak of a Hann-windowed 64 ms spectrum within 3% of each harmonic of the frame's f0."""
    n = 2 * FRAME
    x = np.pad(np.asarray(wave, dtype=np.float64), (0, n))
    seg = x[frames[:, None] * HOP + np.arange(n)[None, :]] * np.hanning(n)  # (M, n)
    mag = np.abs(np.fft.rfft(seg, SPECTRUM))  # (M, SPECTRUM / 2 + 1)
    hz = f0[:, None] * np.arange(1, N_HARMONICS + 1)[None, :]  # (M, H)
    centre = hz * SPECTRUM / sample_rate
    width = np.maximum(1, np.round(0.03 * centre)).astype(int)
    offsets = np.arange(-width.max(), width.max() + 1)  # (O,)
    bins = np.round(centre).astype(int)[..., None] + offsets  # (M, H, O)
    valid = (np.abs(offsets) <= width[..., None]) & (bins < mag.shape[1])
    vals = np.take_along_axis(mag[:, None, :], np.clip(bins, 0, mag.shape[1] - 1).reshape(len(frames), 1, -1),
                              axis=2).reshape(bins.shape)
    amp = np.where(valid, vals, 0.0).max(-1)  # (M, H)
    amp = np.where(hz < sample_rate / 2 * 0.98, amp, 0.0)
    db = 20 * np.log10(np.maximum(amp, 1e-12) / np.maximum(amp.max(1, keepdims=True), 1e-12))
    return np.maximum(db, FLOOR_DB)


def analyse(wave: np.ndarray | Tensor, sample_rate: int = SAMPLE_RATE) -> ToneAnalysis:
    """The notes, pitch-class shares, tonic and timbre features of one clip (N,) in [-1, 1]."""
    x = wave.detach().float().cpu().numpy() if isinstance(wave, Tensor) else np.asarray(wave, dtype=np.float64)
    f0, aperiodicity, rms = yin(x, sample_rate)
    keep = (aperiodicity < VOICED_APERIODICITY) & (rms > SILENCE * max(float(rms.max()), 1e-9))
    midi = 69.0 + 12.0 * np.log2(np.maximum(f0, 1e-3) / 440.0)
    pcs = np.round(midi).astype(int) % 12
    runs = _runs(keep, pcs)
    shares = np.zeros(12)
    notes = []
    for s, n in runs:
        notes.append((s, n, float(np.median(midi[s: s + n]))))
        shares[pcs[s]] += n
    if not runs:
        return ToneAnalysis([], shares, None, np.zeros(N_FEATURES, np.float32))
    shares /= shares.sum()
    # timbre: harmonic profile over every note frame; its change from each note's first to last third;
    # the note's loudness change over the same thirds (a plucked string decays, the others hold)
    frames = np.concatenate([np.arange(s, s + n) for s, n in runs])
    db = _harmonics(x, frames, f0[frames], sample_rate)  # (M, H)
    pos = np.concatenate([np.arange(n) / n for _, n in runs])  # (M,) place within the note, [0, 1)
    early, late = pos < 1 / 3, pos >= 2 / 3
    loud = 20 * np.log10(np.maximum(rms[frames], 1e-9))
    decay = (loud[late].mean() - loud[early].mean()) if late.any() and early.any() else 0.0
    change = db[late].mean(0) - db[early].mean(0) if late.any() and early.any() else np.zeros(N_HARMONICS)
    feats = np.concatenate([db.mean(0), db.std(0), change, [decay]]) / 20.0  # ~unit scale (dB / 20)
    return ToneAnalysis(notes, shares, round(notes[0][2]) % 12, feats.astype(np.float32))


# ---------------------------------------------------------------- the timbre classifier

def tones_config(**overrides: Any) -> ProbeConfig:
    """The config of a fresh tones probe: the classifier's timbre head plus the rules' attributes."""
    base = dict(name="tones", modality="audio", media_shape=[1, NUM_SAMPLES], sample_rate=SAMPLE_RATE,
                attributes={"timbre": list(ALL_TIMBRES), "pitch": list(KEYS), "mode": list(MODES),
                            "pattern": list(PATTERNS)}, width=64, feature_dim=32)
    base.update(overrides)
    return ProbeConfig(**base)


@register_model("probe_tones")
class TonesProbe(Probe):
    """Clips (B, 1, 64000) at 16 kHz in [-1, 1] -> timbre logits (B, T) from the clip's pitch-normalised
    harmonic features; `predict` adds pitch (the tonic), mode and pattern by the rules. Features: the
    MLP's hidden layer (B, 32)."""

    def __init__(self, config: ProbeConfig) -> None:
        super().__init__(config)
        self.register_buffer("mean", torch.zeros(N_FEATURES))  # feature standardisation, set by training
        self.register_buffer("std", torch.ones(N_FEATURES))
        self.mlp = nn.Sequential(nn.Linear(N_FEATURES, config.width), nn.GELU(),
                                 nn.Linear(config.width, config.feature_dim), nn.GELU())
        self.heads = nn.ModuleDict({"timbre": nn.Linear(config.feature_dim, len(config.attributes["timbre"]))})

    def prepare(self, media: Tensor) -> dict[str, Tensor]:
        """(B, 1, N) -> {"features": (B, N_FEATURES)} (the rules' analysis of each clip)."""
        feats = np.stack([analyse(m[0], self.config.sample_rate or SAMPLE_RATE).features for m in media])
        return {"features": torch.from_numpy(feats).to(media.device)}

    def embed(self, prepared: dict[str, Tensor]) -> Tensor:
        """{"features": (B, N_FEATURES)} -> (B, feature_dim)."""
        return self.mlp((prepared["features"].float() - self.mean) / self.std)

    def prepared_logits(self, prepared: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"timbre": self.heads["timbre"](self.embed(prepared))}

    @torch.no_grad()
    def classify(self, features: Sequence[np.ndarray]) -> list[str]:
        """Timbre features (N_FEATURES,) -> their timbre names."""
        if not len(features):
            return []
        x = torch.from_numpy(np.stack(features)).to(self.mean.device)
        names = self.config.attributes["timbre"]  # the classes this probe was trained on
        return [names[int(k)] for k in self.prepared_logits({"features": x})["timbre"].argmax(1).cpu()]

    @torch.no_grad()
    def predict(self, media: Tensor, batch_size: int = 64) -> dict[str, Tensor]:
        """(B, 1, N) -> {timbre, pitch, mode, pattern: (B,) long} (class 0 where the rules find nothing)."""
        self.check_input(media)
        found = [analyse(m[0], self.config.sample_rate or SAMPLE_RATE) for m in media]
        timbres = self.classify([a.features for a in found])
        names = self.config.attributes["timbre"]
        return {"timbre": torch.tensor([names.index(t) for t in timbres], dtype=torch.long),
                "pitch": torch.tensor([a.tonic or 0 for a in found], dtype=torch.long),
                "mode": torch.tensor([MODES.index(a.third) if a.third else 0 for a in found], dtype=torch.long),
                "pattern": torch.tensor([PATTERNS.index(a.pattern) if a.pattern else 0 for a in found],
                                        dtype=torch.long)}


# ---------------------------------------------------------------- scoring

def _as_prompt(p: str | TonePrompt | dict) -> TonePrompt:
    if isinstance(p, TonePrompt):
        return p
    return parse_caption(p) if isinstance(p, str) else TonePrompt.from_dict(p)


def _as_waves(waves: Tensor | np.ndarray) -> np.ndarray:
    """(B, C, N) or (B, N) -> (B, N) float64, channels mixed to mono; ProbeInputError for other shapes."""
    x = waves.detach().float().cpu().numpy() if isinstance(waves, Tensor) else np.asarray(waves, dtype=np.float64)
    if x.ndim == 3:
        x = x.mean(axis=1)
    min_len = int(MIN_SECONDS * SAMPLE_RATE)
    if x.ndim != 2 or x.shape[1] < min_len:
        raise ProbeInputError(f"score_tones takes clips (B, C, N) or (B, N) at {SAMPLE_RATE} Hz in [-1, 1] "
                              f"with N >= {min_len} ({MIN_SECONDS:g} s), got {tuple(waves.shape)}")
    return x.astype(np.float64)


@torch.no_grad()
def score_tones(waves: Tensor | np.ndarray, prompts: Sequence[str | TonePrompt | dict],
                probe: TonesProbe | None = None) -> dict[str, Any]:
    """How many clips (B, C, N) (channels are mixed) or (B, N) at 16 kHz in [-1, 1] play what their prompts ask.

    prompts: captions, TonePrompts or metadata attribute dicts, one per clip. Returns accuracies: pitch
    (the first note is the asked tonic), mode (the asked 3rd above it; scale and arpeggio prompts only,
    NaN when none), pattern, tempo (within 5%), timbre, and all (every asked attribute right); n_mode
    (how many prompts state a mode); and `items`, one dict per clip with its prediction and per-attribute
    correctness. `probe`: a TonesProbe (default: the shipped checkpoints/probes/tones).
    """
    x = _as_waves(waves)
    if len(prompts) != len(x):
        raise ProbeInputError(f"{len(x)} clips but {len(prompts)} prompts")
    probe = probe if probe is not None else load_probe(name="tones")
    asked = [_as_prompt(p) for p in prompts]
    found = [analyse(w) for w in x]
    timbres = probe.classify([a.features for a in found])  # one classifier call for the batch
    items = []
    for w, p, a, timbre in zip(x, asked, found, timbres):
        bpm = estimate_tempo(torch.from_numpy(w), SAMPLE_RATE)
        ok = {"pitch": a.tonic == KEYS.index(p.key), "pattern": a.pattern == p.pattern,
              "tempo": abs(bpm - p.tempo) <= TEMPO_TOLERANCE * p.tempo, "timbre": timbre == p.timbre}
        if p.mode is not None:
            ok["mode"] = a.third == p.mode
        pred = {"pitch": KEYS[a.tonic] if a.tonic is not None else None, "mode": a.third, "pattern": a.pattern,
                "tempo": round(bpm, 2), "timbre": timbre, "notes": len(a.notes)}
        items.append({"prompt": p.text, "pred": pred, **ok, "all": all(ok.values())})
    out: dict[str, Any] = {k: fraction([it[k] for it in items if k in it])
                           for k in ("pitch", "mode", "pattern", "tempo", "timbre", "all")}
    out.update(n=len(items), n_mode=sum("mode" in it for it in items), items=items)
    return out


# ---------------------------------------------------------------- training

def degrade(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A clip (N,) made imperfect like a sample: one or more of added noise (15..40 dB SNR), a low-pass
    (2.5..7 kHz), 8-bit mu-law coding, and a gain (N,) in [-1, 1]."""
    x = np.asarray(wave, dtype=np.float64)
    kinds = rng.random(3) < 0.5
    if not kinds.any():
        kinds[rng.integers(3)] = True
    if kinds[1]:
        x = sosfilt(butter(4, rng.uniform(2500, 7000), fs=SAMPLE_RATE, output="sos"), x)
    if kinds[0]:
        snr = rng.uniform(15, 40)
        x = x + rng.normal(0, np.sqrt(np.mean(x ** 2) / 10 ** (snr / 10)), x.shape)
    if kinds[2]:
        x = mu_law(x)
    return np.clip(x * rng.uniform(0.5, 1.2), -1.0, 1.0)


def mu_law(x: np.ndarray, bits: int = 8) -> np.ndarray:
    """x (N,) in [-1, 1] coded to `bits`-bit mu-law and back (the quantisation noise of a cheap codec)."""
    mu = 2 ** bits - 1
    y = np.sign(x) * np.log1p(mu * np.abs(np.clip(x, -1, 1))) / np.log1p(mu)
    y = np.round((y + 1) / 2 * mu) / mu * 2 - 1
    return np.sign(y) * ((1 + mu) ** np.abs(y) - 1) / mu


def _labelled_features(items: list[ToneItem], seed: int) -> tuple[Tensor, Tensor]:
    """Timbre features (2 N, N_FEATURES) of every clip, clean and degraded, and their timbres (2 N,)."""
    rng = np.random.default_rng(seed)
    feats, labels = [], []
    for item in items:
        for w in (item.wave, degrade(item.wave, rng)):
            feats.append(analyse(w).features)
            labels.append(ALL_TIMBRES.index(item.prompt.timbre))
    return torch.from_numpy(np.stack(feats)), torch.tensor(labels, dtype=torch.long)


def train_tones_probe(out: Path | None, cfg: TonesConfig | None = None, epochs: int = 60, seed: int = 0,
                      command: str = "") -> tuple[TonesProbe, dict[str, Any]]:
    """Train the timbre classifier on cfg's train split plus as many clips of each extra timbre as of an
    average old one, score the probe on its test split (the held-out combinations, real clips) and on other
    extra-timbre clips, write it to `out` (unless None); (probe, test score)."""
    from mmflow.data.tones_concept import timbre_clips
    from mmflow.metrics.probes.train import fit_probe
    from mmflow.model_io import save_model

    cfg = cfg or TonesConfig(n_train=1000, seed=seed)
    start = time.perf_counter()
    per_timbre = cfg.n_train // len(TIMBRES)
    extra = [it for t in EXTRA_TIMBRES for it in timbre_clips(t, 2 * per_timbre, seed)]  # half train, half test
    x, y = _labelled_features(make_tones(cfg, "train") + extra[0::2], seed)
    logger.info("%d feature vectors in %.1f s", len(y), time.perf_counter() - start)
    torch.manual_seed(seed)
    probe = TonesProbe(tones_config(command=command))
    probe.mean.copy_(x.mean(0))
    probe.std.copy_(x.std(0).clamp(min=1e-3))
    fit_probe(probe, {"features": x}, {"timbre": y}, epochs=epochs, batch_size=64, lr=3e-3, seed=seed, log_every=10)
    test = make_tones(cfg, "test")
    score = score_tones(np.stack([it.wave for it in test]), [it.prompt for it in test], probe)
    probe.config.held_out_accuracy = {a: score[a] for a in ("timbre", "pitch", "mode", "pattern")}
    probe.config.held_out_items = score["n"]
    probe.config.extra_metrics = {"tempo": score["tempo"], "all": score["all"]}
    if extra:
        held = extra[1::2]
        extra_score = score_tones(np.stack([it.wave for it in held]), [it.prompt for it in held], probe)
        probe.config.extra_metrics["extra_timbres"] = extra_score["timbre"]
        score["extra_timbres"] = extra_score["timbre"]
    if out is not None:
        save_model(probe, out)
    return probe.eval(), score
