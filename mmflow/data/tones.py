"""Tones: a generated compositional text-to-music set (the shapes set's idea for audio).

4 s mono clips at 16 kHz, each one PATTERN in a KEY and MODE at a TEMPO played by a TIMBRE, with its
caption and the attributes the caption states, so a probe (mmflow.metrics.probes.tones) can check a
sample exactly:

    "a saw arpeggio in A minor at 120 bpm"        tonic triad up and down (1 3 5 8 5 3 ...)
    "a plucked scale in Eb major at 100 bpm"      the key's scale up an octave from the tonic, repeated
    "a sine note C repeated at 80 bpm"            the tonic on every beat (no mode)

One note per beat (quarter notes), each with a short attack and release and silence before the next
(clean onsets, so the onset autocorrelation reads the tempo); every clip starts on the tonic, which lies
between C3 and B4. Square, saw and triangle are band-limited (wavetables summed from the harmonics
below 7 kHz), the plucked string is Karplus-Strong with a fractional delay, so every pitch is in tune
(within a cent).

EXTRA_TIMBRES (an organ: "an organ scale in C major at 100 bpm") are never drawn by these splits: they are
concepts to fine-tune on (mmflow.data.tones_concept), which captions, synthesis and the probe know.

Some timbre-pattern-mode combinations never appear in the train split (`held_out_combos`: a diagonal
rule over timbre x (pattern, mode)); the test prompts are exactly those combinations, every key at two
tempi each, so the test measures composition, not memory.

    cfg = TonesConfig(n_train=2000, seed=0)
    items = make_tones(cfg)                          # list[ToneItem], the train split
    write_tones_folder("data/tones/train", cfg)      # WAVs + metadata.jsonl (file_name, text, attributes)
    test_prompts(cfg)                                # list[TonePrompt]: the held-out prompts

    python -m mmflow.data.tones --out data/tones/train --split train   # 2000 clips in seconds
    python -m mmflow.data.tones --out data/tones/test --split test

Item i of a split is drawn from a generator seeded by (seed, split, i) only, so the same config gives
the same clips sample for sample, and any prefix of a larger set is the smaller set.

For timing conditioning (a model told each clip's length, stable-audio's seconds_total), `short_fraction`
of the train clips end early, after a length drawn from [min_seconds, 4] s (faded out over RELEASE), and
are written that long; the rest, and every test clip, are 4 s:

    python -m mmflow.data.tones --out data/tones_timed/train --split train --short-fraction 0.5

`timbre_free_captions` (`--timbre-free-captions`) lists every train clip twice, under its caption and under the
same words without the timbre ("an arpeggio in A minor at 120 bpm"): in the train split a timbre and a pattern
can tell the mode by themselves (every sine arpeggio is minor), a caption without the timbre cannot.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import lfilter

from mmflow.config import check
from mmflow.errors import UserError

__all__ = ["ALL_TIMBRES", "EXTRA_TIMBRES", "KEYS", "MODES", "NUM_SAMPLES", "PATTERNS", "SAMPLE_RATE", "TEMPI",
           "TIMBRES", "VARIANTS", "CaptionError", "ToneItem", "TonePrompt", "TonesConfig", "caption", "held_out_combos", "make_tones", "midi_to_hz",
           "note_midis", "parse_caption", "synthesize", "test_prompts", "write_tone_items", "write_tones_folder"]

SAMPLE_RATE = 16000
SECONDS = 4.0
NUM_SAMPLES = int(SAMPLE_RATE * SECONDS)
PEAK = 0.8  # each clip is scaled to this peak
KEYS = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")  # index = pitch class
MODES = ("major", "minor")
TEMPI = (80, 100, 120, 140)  # bpm: >= 17% apart, far outside the probe's 5% tolerance
TIMBRES = ("sine", "square", "saw", "triangle", "plucked")
EXTRA_TIMBRES = ("organ",)  # never drawn by the default splits: a concept to fine-tune on (mmflow.data.tones_concept)
ALL_TIMBRES = TIMBRES + EXTRA_TIMBRES  # what captions may name and the probe's classifier tells apart
PATTERNS = ("scale", "arpeggio", "note")
# The five (pattern, mode) variants the held-out rule runs over; "note" states no mode.
VARIANTS = (("scale", "major"), ("scale", "minor"), ("arpeggio", "major"), ("arpeggio", "minor"), ("note", None))
HELD_OUT_SHIFT = 2  # timbre t is held out with variant (t + 2) mod 5: sine -> arpeggio major, ...
LOWEST_TONIC = 48  # MIDI C3; tonics lie in C3..B4 (48..71)
SCALE_STEPS = {"major": (0, 2, 4, 5, 7, 9, 11, 12), "minor": (0, 2, 3, 5, 7, 8, 10, 12)}  # natural minor
ARPEGGIO_STEPS = {"major": (0, 4, 7, 12, 7, 4), "minor": (0, 3, 7, 12, 7, 3)}
MAX_HARMONIC_HZ = 7000.0  # band limit of the wavetables (Nyquist 8 kHz)
ATTACK = 0.005  # s, linear
RELEASE = 0.02  # s, linear, at the end of the note's gate
GATE = (0.6, 0.85)  # fraction of the beat a note sounds (the rest is silence)
LEAD_IN = (0.03, 0.12)  # s of silence before the first note
TABLE = 4096  # wavetable length
PLUCK_DECAY = 0.996  # Karplus-Strong loop gain per period: the string rings ~1 s at C3, less higher up


class CaptionError(UserError, ValueError):
    """A caption that is not one this set writes (parse_caption names it)."""


@dataclass(frozen=True)
class TonePrompt:
    """What a caption states."""

    timbre: str  # a TIMBRES name
    pattern: str  # a PATTERNS name
    key: str  # a KEYS name: the tonic
    mode: str | None  # a MODES name; None for "note"
    tempo: int  # bpm

    @property
    def text(self) -> str:
        return caption(self)

    @property
    def variant(self) -> tuple[str, str | None]:
        return self.pattern, self.mode

    def to_dict(self) -> dict[str, Any]:
        """The JSON attributes of a metadata.jsonl line (without file_name and text)."""
        return dict(vars(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TonePrompt:
        return cls(d["timbre"], d["pattern"], d["key"], d.get("mode"), int(d["tempo"]))


@dataclass
class ToneItem:
    """A generated clip (NUM_SAMPLES,) float32 in [-PEAK, PEAK], its prompt, and how it was played."""

    wave: np.ndarray
    prompt: TonePrompt
    tonic_midi: int  # the first note's MIDI number
    onsets: list[float]  # s, every note's start

    @property
    def seconds(self) -> float:
        return len(self.wave) / SAMPLE_RATE

    @property
    def caption(self) -> str:
        return self.prompt.text


@dataclass
class TonesConfig:
    """How many train clips, the seed, and which timbre-pattern-mode combinations train never plays."""

    n_train: int = 2000
    seed: int = 0
    test_tempi_per_key: int = 2  # test prompts: every held-out combination x every key x this many tempi
    short_fraction: float = 0.0  # train clips cut short (timing conditioning), each to a length in [min_seconds, 4]
    min_seconds: float = 1.0
    held_out: list[list[Any]] | None = None  # [timbre, pattern, mode or None] never in train; None: the diagonal rule
    # train clips also listed under their caption without the timbre ("an arpeggio in A minor at 120 bpm")
    timbre_free_captions: bool = False

    def validate(self) -> None:
        check(self.n_train >= 0, "n_train", "must be >= 0")
        check(1 <= self.test_tempi_per_key <= len(TEMPI), "test_tempi_per_key", f"must lie in 1..{len(TEMPI)}")
        check(0.0 <= self.short_fraction <= 1.0, "short_fraction", f"must lie in [0, 1], got {self.short_fraction}")
        check(0.0 < self.min_seconds <= SECONDS, "min_seconds", f"must lie in (0, {SECONDS:g}], got {self.min_seconds}")
        combos = held_out_combos(self)
        bad = [c for c in combos if c[0] not in TIMBRES or (c[1], c[2]) not in VARIANTS]
        check(not bad, "held_out", f"{bad}: each must be [timbre, pattern, mode] with a timbre in {list(TIMBRES)} "
                                   f"and (pattern, mode) in {list(VARIANTS)}")
        check(len(combos) < len(TIMBRES) * len(VARIANTS), "held_out", "holds out every combination")


def held_out_combos(cfg: TonesConfig) -> list[tuple[str, str, str | None]]:
    """The (timbre, pattern, mode) combinations of the test split, in TIMBRES order.

    Default (cfg.held_out None), the diagonal rule: timbre number t is held out with VARIANTS[(t + 2) % 5]:
    sine arpeggio major, square arpeggio minor, saw note, triangle scale major, plucked scale minor.
    Every timbre and every (pattern, mode) still appears in training with four partners.
    """
    if cfg.held_out is not None:
        return [(str(t), str(p), None if m is None else str(m)) for t, p, m in cfg.held_out]
    return [(t, *VARIANTS[(k + HELD_OUT_SHIFT) % len(VARIANTS)]) for k, t in enumerate(TIMBRES)]


# ---------------------------------------------------------------- captions

def caption(prompt: TonePrompt, timbre: bool = True) -> str:
    """'a saw arpeggio in A minor at 120 bpm' / 'a sine note C repeated at 80 bpm' / 'an organ scale ...';
    timbre=False leaves the timbre out: 'an arpeggio in A minor at 120 bpm' (a second train caption, not a prompt
    the probe scores: parse_caption refuses it)."""
    if prompt.pattern == "note":
        text = f"{prompt.timbre} note {prompt.key} repeated at {prompt.tempo} bpm"
    else:
        text = f"{prompt.timbre} {prompt.pattern} in {prompt.key} {prompt.mode} at {prompt.tempo} bpm"
    text = text if timbre else text.split(" ", 1)[1]
    return f"{'an' if text[0] in 'aeiou' else 'a'} {text}"


_KEY_OF = {k.lower(): k for k in KEYS}
_T, _K = "|".join(ALL_TIMBRES), "|".join(re.escape(k.lower()) for k in KEYS)
_TEMPO = "|".join(str(t) for t in TEMPI)
_TONAL_RE = re.compile(f"^an? ({_T}) (scale|arpeggio) in ({_K}) ({'|'.join(MODES)}) at ({_TEMPO}) bpm$")
_NOTE_RE = re.compile(f"^an? ({_T}) note ({_K}) repeated at ({_TEMPO}) bpm$")


def parse_caption(text: str) -> TonePrompt:
    """The inverse of `caption`: what a caption of this set states (CaptionError for any other text)."""
    t = " ".join(text.strip().lower().split())
    if m := _TONAL_RE.match(t):
        timbre, pattern, key, mode, tempo = m.groups()
        return TonePrompt(timbre, pattern, _KEY_OF[key], mode, int(tempo))
    if m := _NOTE_RE.match(t):
        timbre, key, tempo = m.groups()
        return TonePrompt(timbre, "note", _KEY_OF[key], None, int(tempo))
    raise CaptionError(f"{text!r} is not a tones caption (like 'a saw arpeggio in A minor at 120 bpm' or "
                       f"'a sine note C repeated at 80 bpm'; timbres {', '.join(ALL_TIMBRES)}; keys "
                       f"{', '.join(KEYS)}; tempi {', '.join(map(str, TEMPI))} bpm)")


# ---------------------------------------------------------------- synthesis

def midi_to_hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


def note_midis(prompt: TonePrompt, tonic_midi: int, count: int) -> list[int]:
    """The MIDI numbers of the first `count` notes of the prompt's pattern from `tonic_midi` (the cycle repeats)."""
    if prompt.pattern == "note":
        steps: tuple[int, ...] = (0,)
    elif prompt.pattern == "scale":
        steps = SCALE_STEPS[prompt.mode]
    else:
        steps = ARPEGGIO_STEPS[prompt.mode]
    return [tonic_midi + steps[i % len(steps)] for i in range(count)]


@functools.lru_cache(maxsize=256)
def _wavetable(timbre: str, hz: float) -> np.ndarray:
    """One period (TABLE,) of a band-limited waveform of peak ~1: its harmonics below MAX_HARMONIC_HZ only
    (cached: a set plays at most 6 timbres x 37 pitches). The organ is drawbar-like: harmonics 1, 2, 3, 4, 6, 8
    (octaves and fifths, no 5th or 7th), unlike the odd-only square/triangle and the every-harmonic saw."""
    phase = np.arange(TABLE) / TABLE
    top = max(1, int(MAX_HARMONIC_HZ // hz))
    k = np.arange(1, top + 1)
    if timbre == "sine":
        amp = (k == 1).astype(np.float64)
    elif timbre == "square":
        amp = np.where(k % 2 == 1, 4 / (np.pi * k), 0.0)
    elif timbre == "saw":
        amp = 2 / (np.pi * k) * (-1.0) ** (k + 1)
    elif timbre == "triangle":
        amp = np.where(k % 2 == 1, 8 / (np.pi * k) ** 2 * (-1.0) ** ((k - 1) // 2), 0.0)
    elif timbre == "organ":
        drawbars = {1: 1.0, 2: 0.7, 3: 0.5, 4: 0.35, 6: 0.25, 8: 0.2}
        amp = np.array([drawbars.get(int(j), 0.0) for j in k]) / 1.6  # peak ~1
    else:
        raise ValueError(f"no wavetable for timbre {timbre!r}")
    return amp @ np.sin(2 * np.pi * k[:, None] * phase[None, :])  # (TABLE,)


def _pluck(hz: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """n samples of a Karplus-Strong string at `hz`, peak ~1: a noise burst through the loop
    y[n] = x[n] + DECAY * (a y[n - d] + c y[n - d - 1]), a + c = 1, whose delay at low frequencies is
    d + c samples; d + c = sr / hz (the fractional part of the period by the taps' weights: in tune
    within a cent across the set's range)."""
    period = SAMPLE_RATE / hz
    d = int(np.floor(period))
    c = period - d
    burst = np.zeros(n)
    m = min(n, d)
    burst[:m] = np.convolve(rng.uniform(-1.0, 1.0, m), [0.25, 0.5, 0.25], "same")  # softened: no energy at Nyquist
    burst[:m] -= burst[:m].mean()
    denom = np.zeros(d + 2)
    denom[0], denom[d], denom[d + 1] = 1.0, -PLUCK_DECAY * (1.0 - c), -PLUCK_DECAY * c
    y = lfilter([1.0], denom, burst)  # (n,)
    return y / max(float(np.abs(y).max()), 1e-9)


def _envelope(n_on: int, n_total: int) -> np.ndarray:
    """(n_total,) linear attack, hold, linear release ending at n_on samples, then silence."""
    t = np.arange(n_total)
    att, rel = max(1, int(ATTACK * SAMPLE_RATE)), max(1, int(RELEASE * SAMPLE_RATE))
    return np.minimum(1.0, (t + 1) / att) * np.clip((n_on - t) / rel, 0.0, 1.0)


def synthesize(prompt: TonePrompt, rng: np.random.Generator) -> ToneItem:
    """The clip of `prompt`: tonic octave, gate, lead-in and loudness drawn from rng; peak PEAK."""
    tonic = LOWEST_TONIC + KEYS.index(prompt.key) + 12 * int(rng.integers(2))
    beat = 60.0 / prompt.tempo
    gate = rng.uniform(*GATE)
    start = rng.uniform(*LEAD_IN)
    count = int(np.ceil((SECONDS - start) / beat))
    wave = np.zeros(NUM_SAMPLES)
    onsets = []
    for i, midi in enumerate(note_midis(prompt, tonic, count)):
        t0 = start + i * beat
        s0 = int(round(t0 * SAMPLE_RATE))
        n_total = min(int(round(beat * SAMPLE_RATE)), NUM_SAMPLES - s0)
        if n_total <= 0:
            break
        hz = midi_to_hz(midi)
        if prompt.timbre == "plucked":
            tone = _pluck(hz, n_total, rng)
        else:
            phase = (hz * np.arange(n_total) / SAMPLE_RATE + rng.uniform()) % 1.0
            table = _wavetable(prompt.timbre, hz)
            tone = np.interp(phase * TABLE, np.arange(TABLE + 1), np.append(table, table[0]))
        loud = 1.0 if i % 4 == 0 else rng.uniform(0.8, 0.95)  # a light accent on each bar's first beat
        wave[s0: s0 + n_total] += loud * tone * _envelope(int(gate * beat * SAMPLE_RATE), n_total)
        onsets.append(t0)
    wave *= PEAK / max(np.abs(wave).max(), 1e-9)
    return ToneItem(wave.astype(np.float32), prompt, tonic, onsets)


# ---------------------------------------------------------------- sampling

_SPLITS = {"train": 0, "test": 1}


def _rng(cfg: TonesConfig, split: str, i: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, _SPLITS[split], i])


def _train_combos(cfg: TonesConfig) -> list[tuple[str, str, str | None]]:
    held = held_out_combos(cfg)
    return [(t, p, m) for t in TIMBRES for p, m in VARIANTS if (t, p, m) not in held]


def test_prompts(cfg: TonesConfig) -> list[TonePrompt]:
    """The held-out prompts: every held-out combination in every key, each at cfg.test_tempi_per_key tempi
    (key k of combination c at TEMPI[(k + c + j * 4 // n) % 4], j < n: every tempo as often as the others)."""
    cfg.validate()
    n = cfg.test_tempi_per_key
    return [TonePrompt(t, p, key, m, TEMPI[(k + c + j * len(TEMPI) // n) % len(TEMPI)])
            for c, (t, p, m) in enumerate(held_out_combos(cfg)) for k, key in enumerate(KEYS) for j in range(n)]


test_prompts.__test__ = False  # type: ignore[attr-defined]  (not a pytest test, whatever its name)


def make_tones(cfg: TonesConfig, split: str = "train") -> list[ToneItem]:
    """The split's clips: train, cfg.n_train clips of train combinations (any key and tempo); test, one
    clip of each test prompt. Deterministic in cfg (see the module docstring)."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {list(_SPLITS)}, got {split!r}")
    cfg.validate()
    if split == "test":
        return [synthesize(p, _rng(cfg, "test", i)) for i, p in enumerate(test_prompts(cfg))]
    combos = _train_combos(cfg)
    items = []
    for i in range(cfg.n_train):
        rng = _rng(cfg, "train", i)
        t, p, m = combos[int(rng.integers(len(combos)))]
        prompt = TonePrompt(t, p, KEYS[int(rng.integers(len(KEYS)))], m, TEMPI[int(rng.integers(len(TEMPI)))])
        item = synthesize(prompt, rng)
        if cfg.short_fraction and rng.uniform() < cfg.short_fraction:  # drawn after the clip: it stays the same
            item = cut_short(item, rng.uniform(cfg.min_seconds, SECONDS))
        items.append(item)
    return items


def cut_short(item: ToneItem, seconds: float) -> ToneItem:
    """The item ending after `seconds` (faded out over its last RELEASE s, so it ends without a click)."""
    n = round(seconds * SAMPLE_RATE)
    fade = np.clip(np.arange(n, 0, -1) / (RELEASE * SAMPLE_RATE), 0.0, 1.0)  # (n,) 1 ... 1, then down to 0
    return ToneItem((item.wave[:n] * fade).astype(np.float32), item.prompt, item.tonic_midi,
                    [t for t in item.onsets if t < seconds])


def write_tones_folder(folder: str | Path, cfg: TonesConfig, split: str = "train") -> Path:
    """Write the split into `folder` as an audio folder (see `write_tone_items`); returns the folder."""
    return write_tone_items(folder, make_tones(cfg, split), timbre_free=cfg.timbre_free_captions and split == "train")


def write_tone_items(folder: str | Path, items: list[ToneItem], timbre_free: bool = False) -> Path:
    """Write clips as an audio folder: tone_00000.wav ... (16-bit PCM, 16 kHz mono) and metadata.jsonl lines
    {"file_name", "text", "timbre", "pattern", "key", "mode", "tempo", "seconds"}; with `timbre_free` each clip has
    a second line, its caption without the timbre (a file listed twice: two captions). Returns the folder. Files
    of an earlier write are overwritten, never merged."""
    import soundfile as sf

    from mmflow.utils.fs import atomic_folder

    with atomic_folder(folder) as tmp:
        lines = []
        for i, item in enumerate(items):
            name = f"tone_{i:05d}.wav"
            sf.write(str(tmp / name), item.wave, SAMPLE_RATE, subtype="PCM_16")
            texts = [item.caption, caption(item.prompt, timbre=False)] if timbre_free else [item.caption]
            lines += [json.dumps({"file_name": name, "text": text, **item.prompt.to_dict(),
                                  "seconds": round(item.seconds, 4)}) for text in texts]
        (tmp / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return Path(folder)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmflow.data.tones", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the folder to write (replaced if it exists)")
    p.add_argument("--split", choices=list(_SPLITS), default="train")
    p.add_argument("--n-train", type=int, default=TonesConfig.n_train, help="train clips")
    p.add_argument("--test-tempi-per-key", type=int, default=TonesConfig.test_tempi_per_key)
    p.add_argument("--short-fraction", type=float, default=0.0, help="train clips cut short (timing conditioning)")
    p.add_argument("--min-seconds", type=float, default=TonesConfig.min_seconds, help="the shortest cut")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timbre-free-captions", action="store_true",
                   help="train clips also listed under their caption without the timbre")
    args = p.parse_args(argv)
    cfg = TonesConfig(n_train=args.n_train, seed=args.seed, test_tempi_per_key=args.test_tempi_per_key,
                      short_fraction=args.short_fraction, min_seconds=args.min_seconds,
                      timbre_free_captions=args.timbre_free_captions)
    folder = write_tones_folder(args.out, cfg, args.split)
    rows = [json.loads(line)["file_name"] for line in (folder / "metadata.jsonl").open()]
    held = ", ".join(" ".join(x for x in c if x) for c in held_out_combos(cfg))
    print(f"wrote {len(set(rows))} {args.split} clips ({len(rows)} captions) to {args.out}; held out: {held}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
