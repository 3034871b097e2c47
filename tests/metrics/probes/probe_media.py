"""Small synthetic media with known labels for the probe tests (no ../shared needed)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

COLOURS = {"red": (0.8, -0.6, -0.6), "blue": (-0.6, -0.4, 0.8)}


def moving_squares(n: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """n clips (n, 3, 16, 64, 64): a grey square moving left (0) or right (1) on red (0) or blue (1)."""
    g = torch.Generator().manual_seed(seed)
    motion = torch.randint(0, 2, (n,), generator=g)
    background = torch.randint(0, 2, (n,), generator=g)
    clips = torch.empty(n, 3, 16, 64, 64)
    for i in range(n):
        colour = torch.tensor(COLOURS[list(COLOURS)[int(background[i])]]).view(3, 1, 1, 1)
        clips[i] = colour.expand(3, 16, 64, 64)
        y = int(torch.randint(8, 44, (1,), generator=g))
        for t in range(16):
            x = 8 + 2 * t if motion[i] == 1 else 40 - 2 * t
            clips[i, :, t, y: y + 14, x: x + 14] = 0.9
    return clips, motion, background


def tone(freq: float, seconds: float, sample_rate: int, square: bool) -> Tensor:
    t = torch.arange(round(seconds * sample_rate)) / sample_rate
    s = torch.sin(2 * math.pi * freq * t)
    wave = torch.sign(s) * 0.5 if square else s
    return wave * torch.exp(-3 * t)  # a decaying note


def arpeggios(n: int, seed: int, sample_rate: int = 16000) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """n clips (n, 1, 64000): tonic first, then notes of the major (0) or minor (1) tonic triad of a
    random key (0..11), as sine (instrument 0) or square (instrument 1) tones. -> (waves, key, mode, instrument)."""
    g = torch.Generator().manual_seed(seed)
    key = torch.randint(0, 12, (n,), generator=g)
    mode = torch.randint(0, 2, (n,), generator=g)
    instrument = torch.randint(0, 2, (n,), generator=g)
    waves = torch.zeros(n, 1, 4 * sample_rate)
    note = sample_rate // 4  # 4 notes a second
    for i in range(n):
        triad = [0, 4 if mode[i] == 0 else 3, 7]
        for k in range(16):
            step = triad[0] if k == 0 else triad[int(torch.randint(0, 3, (1,), generator=g))]
            freq = 261.63 * 2 ** ((int(key[i]) + step) / 12)  # from middle C up
            waves[i, 0, k * note: (k + 1) * note] = tone(freq, 0.25, sample_rate, bool(instrument[i]))
    return waves * 0.8, key, mode, instrument


def click_track(bpm: float, seconds: float = 4.0, sample_rate: int = 16000) -> Tensor:
    """(N,) short noise bursts at every beat of `bpm`."""
    wave = torch.zeros(round(seconds * sample_rate))
    g = torch.Generator().manual_seed(0)
    burst = torch.randn(200, generator=g) * torch.exp(-torch.arange(200) / 40.0)
    t = 0.0
    while t < seconds:
        i = round(t * sample_rate)
        wave[i: i + 200] += burst[: len(wave) - i]
        t += 60.0 / bpm
    return wave.clamp(-1, 1)


SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
DEGREES = (0, 2, 4, 2, 0, 1, 2, 4, 5, 4, 2, 1, 0, 4, 2, 0)  # one a beat: starts on the tonic, triad-heavy


def melody(tonic: int, mode: str, bpm: float, seconds: float = 4.0, sample_rate: int = 16000) -> Tensor:
    """(1, seconds * sample_rate) in [-1, 1]: a plucked harmonic tone (6 partials) on every beat, walking `mode`'s
    scale from the pitch class `tonic` above middle C."""
    t = torch.arange(int(seconds * sample_rate), dtype=torch.float64) / sample_rate
    out = torch.zeros_like(t)
    beat = 60.0 / bpm
    for i in range(math.ceil(seconds / beat)):
        d = DEGREES[i % len(DEGREES)]
        hz = 440.0 * 2 ** ((60 + tonic + SCALES[mode][d % 7] + 12 * (d // 7) - 69) / 12)
        local = (t - i * beat).clamp(min=0.0)  # before the note: 0 (masked below), not exp overflow
        env = torch.exp(-4 * local) * (1 - torch.exp(-400 * local)) * ((t >= i * beat) & (local < beat))
        out += env * sum(0.6**k * torch.sin(2 * math.pi * hz * (k + 1) * local) for k in range(6))
    return (0.8 * out / out.abs().max()).float()[None]


def music_caption(instrument: str, key: str, mode: str, bpm: int, chords: bool = False) -> str:
    """A music16k caption (its README's wording): "a cheerful violin melody in D major at 120 bpm"."""
    mood = "cheerful" if mode == "major" else "melancholic"
    return f"a {mood} {instrument} melody{' with chords' if chords else ''} in {key} {mode} at {bpm} bpm"


class StubProbe:
    """A probe stand-in for the prompt checks: records what it is given; predicts, item by item, the class names
    it is told to (answers: {attribute: [name per item]})."""

    def __init__(self, attributes: dict[str, list[str]], answers: dict[str, list[str]]) -> None:
        self.attributes = {a: list(names) for a, names in attributes.items()}
        self.answers = {a: [self.attributes[a].index(x) for x in v] for a, v in answers.items()}
        self.seen: list[Tensor] = []

    def predict(self, media: Tensor) -> dict[str, Tensor]:
        start = sum(len(s) for s in self.seen)
        self.seen.append(media)
        return {a: torch.tensor(v[start: start + len(media)], dtype=torch.long) for a, v in self.answers.items()}
