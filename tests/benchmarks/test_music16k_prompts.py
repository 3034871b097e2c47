"""benchmarks/music16k_prompts.py: captions whose (instrument, key, mode) no training clip plays."""

from __future__ import annotations

import sys

import pytest

from mmflow.metrics.probes.music import INSTRUMENTS, pitch_class
from mmflow.metrics.probes.music_check import parse_music_caption
from toy_recipes import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import music16k_prompts  # noqa: E402


def test_novel_captions_avoid_every_trained_combination_and_parse() -> None:
    # the training set plays every instrument in C# (spelled Db here) and D major, and in every minor key but A
    rows = [{"instrument": i, "key": k, "mode": "major", "chords": i == "piano"} for i in INSTRUMENTS for k in ("Db", "D")]
    rows += [{"instrument": i, "key": k, "mode": "minor"} for i in INSTRUMENTS
             for k in ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "Bb", "B")]
    captions = music16k_prompts.novel_captions(rows, per=3, seed=0)
    assert len(captions) == len(INSTRUMENTS) * 2 * 3
    asked = [parse_music_caption(c) for c in captions]
    seen = {(r["instrument"], pitch_class(r["key"]), r["mode"]) for r in rows}
    assert not {(a.instrument, pitch_class(a.key), a.mode) for a in asked} & seen
    assert {a.key for a in asked if a.mode == "minor"} == {"A"}  # the one minor key left
    assert all(80 <= a.bpm <= 140 for a in asked)
    assert captions == music16k_prompts.novel_captions(rows, per=3, seed=0)  # deterministic
    rows += [{"instrument": "piano", "key": "A", "mode": "minor"}]
    with pytest.raises(ValueError, match="piano minor"):
        music16k_prompts.novel_captions(rows, per=1, seed=0)
