"""Tests for mmflow/data/tones_concept.py: the new-timbre concept set, its held-out prompts and its prior."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from mmflow.config import ConfigError
from mmflow.data.tones import (KEYS, NUM_SAMPLES, SAMPLE_RATE, TEMPI, TIMBRES, VARIANTS, TonesConfig, make_tones,
                               parse_caption)
from mmflow.data.tones_concept import (TonesConceptConfig, main, make_tones_concept, timbre_clips,
                                       tones_concept_prompts, write_tones_concept_folder)
from mmflow.metrics.probes.tones import analyse

SMALL = TonesConceptConfig(n_concept=10, n_test=8, n_prior=4, seed=2)


def _combo(p) -> tuple:
    return p.pattern, p.mode, p.key, p.tempo


def test_train_and_test_prompts_are_disjoint_combinations_of_the_new_timbre():
    train, test = tones_concept_prompts(SMALL, "train"), tones_concept_prompts(SMALL, "test")
    assert len(train) == 10 and len(test) == 8 and {p.timbre for p in train + test} == {"organ"}
    assert not {_combo(p) for p in train} & {_combo(p) for p in test}  # the test measures the word, not memory
    assert all(p.key in KEYS and p.tempo in TEMPI and (p.pattern, p.mode) in VARIANTS for p in train + test)
    counts = Counter(p.variant for p in train)
    assert set(counts) == set(VARIANTS) and max(counts.values()) == min(counts.values()) == 2  # variants in turn
    assert len({p.variant for p in test}) > 2  # spread over the rest, not its head
    assert tones_concept_prompts(SMALL) == train and tones_concept_prompts(TonesConceptConfig(n_concept=10)) != train
    assert tones_concept_prompts(TonesConceptConfig(n_concept=15, seed=2))[:10] == train  # a prefix grows


def test_clips_play_the_organ_in_tune_and_the_prior_is_the_timed_train_split():
    a, b = make_tones_concept(SMALL), make_tones_concept(SMALL)
    assert len(a) == 14 and all(np.array_equal(x.wave, y.wave) for x, y in zip(a, b))
    for it in a[:10]:
        assert parse_caption(it.caption) == it.prompt and it.caption.startswith("an organ ")
        assert it.wave.shape == (NUM_SAMPLES,)
        first = analyse(it.wave).notes[0][2]
        assert abs(first - it.tonic_midi) < 0.1  # the organ's fundamental is its pitch (within 10 cents)
    spectrum = np.abs(np.fft.rfft(a[0].wave[:SAMPLE_RATE]))  # drawbars 1 2 3 4 6 8: no 5th or 7th harmonic
    f0 = 440.0 * 2 ** ((a[0].tonic_midi - 69) / 12)
    level = [spectrum[int(round(k * f0))] for k in range(1, 9)]
    assert level[4] < 0.05 * level[0] and level[6] < 0.05 * level[0] and level[1] > 0.3 * level[0]
    prior = make_tones(TonesConfig(n_train=4, seed=2, short_fraction=0.5), "train")
    assert all(np.array_equal(x.wave, y.wave) and x.prompt == y.prompt for x, y in zip(a[10:], prior))
    assert {p.prompt.timbre for p in prior} <= set(TIMBRES)
    assert len(make_tones_concept(SMALL, "test")) == 8  # no prior in the test split


def test_probe_clips_come_from_their_own_stream():
    clips = timbre_clips("organ", 6, seed=2)
    assert len(clips) == 6 and {c.prompt.timbre for c in clips} == {"organ"}
    concept = {c.wave.tobytes() for c in make_tones_concept(SMALL)}
    assert not {c.wave.tobytes() for c in clips} & concept
    with pytest.raises(ConfigError):
        timbre_clips("sine", 2)


@pytest.mark.parametrize("field, value, key", [("timbre", "saw", "timbre"), ("n_concept", 0, "n_concept"),
                                               ("n_concept", 240, "n_concept"), ("n_test", 300, "n_test"),
                                               ("n_prior", -1, "n_prior"), ("prior_short_fraction", 2.0,
                                                                            "prior_short_fraction")])
def test_config_errors_name_the_key(field, value, key):
    with pytest.raises(ConfigError) as info:
        tones_concept_prompts(TonesConceptConfig(**{field: value}))
    assert info.value.key == key


def test_written_folder_and_command_line(tmp_path, capsys):
    folder = write_tones_concept_folder(tmp_path / "c", TonesConceptConfig(n_concept=2, n_test=2, n_prior=1))
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert [r["timbre"] for r in rows[:2]] == ["organ", "organ"] and len(rows) == 3
    assert all(sf.info(str(folder / r["file_name"])).samplerate == SAMPLE_RATE for r in rows)
    assert main(["--out", str(tmp_path / "t"), "--split", "test", "--n-concept", "4", "--n-test", "3"]) == 0
    assert "wrote 3 test clips of the organ concept" in capsys.readouterr().out
