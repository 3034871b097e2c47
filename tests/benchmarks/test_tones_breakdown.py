"""benchmarks/tones_breakdown.py's per-note interval count on real clips of the tones set."""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np

from mmflow.data.tones import TonePrompt, synthesize
from toy_recipes import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import tones_breakdown  # noqa: E402


def test_interval_hits_count_the_asked_intervals_and_catch_a_wrong_third() -> None:
    prompts = [TonePrompt("sine", "arpeggio", "A", "minor", 120), TonePrompt("saw", "scale", "D", "major", 140),
               TonePrompt("square", "note", "C", None, 100)]
    waves = np.stack([synthesize(p, np.random.default_rng(i)).wave for i, p in enumerate(prompts)])
    hits = tones_breakdown.interval_hits(waves, prompts)
    assert set(hits) == {"arpeggio", "scale"}  # a repeated note has no intervals to count
    assert hits["arpeggio"] == [[1, 1]] * 6 and hits["scale"] == [[1, 1]] * 8
    # the same clips asked in the other mode: exactly the notes the mode moves miss (the arpeggio's two thirds;
    # the scale's 3rd, 6th and 7th degrees)
    other = [replace(prompts[0], mode="major"), replace(prompts[1], mode="minor")]
    hits = tones_breakdown.interval_hits(waves[:2], other)
    assert [h for h, _ in hits["arpeggio"]] == [1, 0, 1, 1, 1, 0]
    assert [h for h, _ in hits["scale"]] == [1, 1, 0, 1, 1, 0, 0, 1]
