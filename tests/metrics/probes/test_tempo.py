"""The rule-based tempo estimate on click tracks of known tempo, and how its errors are counted."""

from __future__ import annotations

import pytest
import torch
from probe_media import click_track

from mmflow.metrics.probes import ProbeInputError, estimate_tempo, tempo_errors


@pytest.mark.parametrize("bpm", [64.0, 72.0, 96.0, 117.0, 128.0, 150.0, 174.0])
def test_click_track_tempo_within_2_bpm(bpm):
    assert abs(estimate_tempo(click_track(bpm), 16000) - bpm) <= 2.0


def test_other_rate_and_channels():
    wave = click_track(110.0, sample_rate=22050)
    assert abs(estimate_tempo(torch.stack([wave, wave]), 22050) - 110.0) <= 2.0  # (C, N)


def test_tempo_errors_count_octaves_apart():
    e = tempo_errors([100.0, 200.0, 61.0, 90.0], [100.0, 100.0, 120.0, 100.0])
    assert e.octave_errors == pytest.approx(0.5)  # 200 for 100, 61 for 120 (within 4% of 60)
    assert e.mean_abs_error == pytest.approx((0 + 100 + 59 + 10) / 4)
    assert e.mean_abs_error_no_octave == pytest.approx(5.0)
    assert e.within_2_bpm == pytest.approx(0.25)
    assert e.count == 4


def test_bad_input():
    with pytest.raises(ProbeInputError, match=r"\(N,\) or \(C, N\)"):
        estimate_tempo(torch.zeros(1, 1, 16000), 16000)
    with pytest.raises(ProbeInputError, match="at least"):
        estimate_tempo(torch.zeros(4000), 16000)
