"""Tests for mmflow/data/tones.py: the generated compositional music set, its held-out split and its captions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

import mmflow.data.tones as td  # as a module: `test_prompts` is not a pytest test
from mmflow.config import ConfigError
from mmflow.data.media_folder import MediaFolderConfig, MediaFolderDataset
from mmflow.data.tones import (KEYS, NUM_SAMPLES, PEAK, SAMPLE_RATE, TEMPI, TIMBRES, VARIANTS, CaptionError, TonePrompt,
                               TonesConfig, held_out_combos, make_tones, midi_to_hz, parse_caption)

SMALL = TonesConfig(n_train=40, seed=3)


def combo(p: TonePrompt) -> tuple[str, str, str | None]:
    return p.timbre, p.pattern, p.mode


def test_same_seed_same_samples_other_seed_other_clips():
    a, b = make_tones(SMALL), make_tones(TonesConfig(n_train=40, seed=3))
    assert len(a) == 40 and [x.caption for x in a] == [x.caption for x in b]
    assert all(x.wave.dtype == np.float32 and x.wave.shape == (NUM_SAMPLES,) for x in a)
    assert b"".join(x.wave.tobytes() for x in a) == b"".join(x.wave.tobytes() for x in b)
    c = make_tones(TonesConfig(n_train=40, seed=4))
    assert sum(x.caption != y.caption for x, y in zip(a, c)) > 30
    # item i depends on (seed, split, i) only: a smaller set is a prefix of a larger one
    d = make_tones(TonesConfig(n_train=10, seed=3))
    assert all(np.array_equal(x.wave, y.wave) and x.prompt == y.prompt for x, y in zip(d, a[:10]))


def test_held_out_combos_follow_the_documented_rule():
    held = held_out_combos(TonesConfig())
    assert held == [("sine", "arpeggio", "major"), ("square", "arpeggio", "minor"), ("saw", "note", None),
                    ("triangle", "scale", "major"), ("plucked", "scale", "minor")]
    assert held == [(t, *VARIANTS[(k + 2) % 5]) for k, t in enumerate(TIMBRES)]
    assert held_out_combos(TonesConfig(held_out=[["saw", "scale", "minor"]])) == [("saw", "scale", "minor")]


def test_held_out_combinations_never_in_train_and_exactly_the_test_split():
    cfg = TonesConfig(n_train=400, seed=0)
    held = set(held_out_combos(cfg))
    train = make_tones(cfg)
    seen = {combo(x.prompt) for x in train}
    assert not seen & held and len(seen) == len(TIMBRES) * len(VARIANTS) - len(held)  # every other one is played
    assert {x.prompt.key for x in train} == set(KEYS) and {x.prompt.tempo for x in train} == set(TEMPI)
    assert not any(x.caption.startswith("a saw note") for x in train)
    tests = td.test_prompts(cfg)
    assert len(tests) == len(held) * len(KEYS) * 2 == 120 and len(set(tests)) == 120
    assert {combo(p) for p in tests} == held
    assert {(combo(p), p.key) for p in tests} == {(c, k) for c in held for k in KEYS}
    assert all(sum(p.tempo == t for p in tests) == 30 for t in TEMPI)  # every tempo as often
    assert [x.prompt for x in make_tones(cfg, "test")] == tests


def test_clips_play_what_the_caption_states():
    items = make_tones(SMALL) + make_tones(SMALL, "test")[::7]
    for it in items:
        p = it.prompt
        assert parse_caption(it.caption) == p
        assert abs(float(np.abs(it.wave).max()) - PEAK) < 1e-6
        assert 48 <= it.tonic_midi <= 71 and it.tonic_midi % 12 == KEYS.index(p.key)  # C3..B4, the key's tonic
        assert np.all(it.wave[: int(0.03 * SAMPLE_RATE)] == 0)  # silence before the first note
        np.testing.assert_allclose(np.diff(it.onsets), 60.0 / p.tempo, atol=1e-9)  # one note per beat
        assert len(it.onsets) >= int(4 * p.tempo / 60) - 1
    notes = td.note_midis(TonePrompt("sine", "arpeggio", "A", "minor", 120), 57, 8)
    assert notes == [57, 60, 64, 69, 64, 60, 57, 60]
    assert td.note_midis(TonePrompt("sine", "scale", "C", "major", 80), 48, 9) == [48, 50, 52, 53, 55, 57, 59, 60, 48]


def tuning_cents(wave: np.ndarray, t0: float, hz: float, seconds: float = 0.2) -> tuple[float, float]:
    """(cents from `hz` of the spectral peak within a quarter tone of it, the peak above 7.2 kHz against the
    highest) of the `seconds` from t0 + 10 ms."""
    s0 = int((t0 + 0.01) * SAMPLE_RATE)
    seg = wave[s0: s0 + int(seconds * SAMPLE_RATE)].astype(np.float64)
    n = 1 << 20  # 0.015 Hz bins (zero-padded)
    mag = np.abs(np.fft.rfft(seg * np.hanning(len(seg)), n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    window = (freqs > hz * 2 ** (-1 / 24)) & (freqs < hz * 2 ** (1 / 24))
    peak = freqs[window][np.argmax(mag[window])]
    return 1200 * float(np.log2(peak / hz)), float(mag[freqs > 7200].max() / mag.max())


@pytest.mark.parametrize("timbre", TIMBRES)
def test_every_timbre_is_in_tune_and_band_limited(timbre):
    # the lowest and highest tonics (C3, B4: both octaves of C and B), and the highest note (B5, a B4 scale's top)
    items = [td.synthesize(TonePrompt(timbre, "scale", key, "major", 140), np.random.default_rng(seed))
             for key in ("C", "B") for seed in range(6)]
    assert {it.tonic_midi for it in items} == {48, 60, 59, 71}
    for it in items:
        for k in (0, 7):  # the tonic, its octave
            midi = it.tonic_midi + 12 * (k == 7)
            cents, alias = tuning_cents(it.wave, it.onsets[k], midi_to_hz(midi))
            assert abs(cents) < 3.0, (timbre, midi, cents)
            assert alias < 1e-3, (timbre, midi, alias)  # nothing near Nyquist: band-limited, no aliasing


def test_caption_text_and_parse_errors():
    tonal = TonePrompt("saw", "arpeggio", "A", "minor", 120)
    assert tonal.text == "a saw arpeggio in A minor at 120 bpm"
    note = TonePrompt("sine", "note", "C", None, 80)
    assert note.text == "a sine note C repeated at 80 bpm"
    assert TonePrompt("plucked", "scale", "Eb", "major", 100).text == "a plucked scale in Eb major at 100 bpm"
    assert parse_caption("  A Saw arpeggio in a  MINOR at 120 bpm ") == tonal
    assert parse_caption("a sine note c# repeated at 80 bpm").key == "C#"
    assert TonePrompt.from_dict(json.loads(json.dumps(tonal.to_dict()))) == tonal
    assert TonePrompt.from_dict(json.loads(json.dumps(note.to_dict()))) == note
    for bad in ("a sine note C repeated at 90 bpm", "a violin scale in C major at 80 bpm",
                "a saw scale in H major at 80 bpm", "a saw scale in D# major at 80 bpm", "a sine note C minor repeated at 80 bpm",
                "a saw arpeggio in A dorian at 120 bpm", "a saw scale in C major"):
        with pytest.raises(CaptionError, match="not a tones caption"):
            parse_caption(bad)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="held_out"):
        make_tones(TonesConfig(held_out=[["violin", "scale", "major"]]))
    with pytest.raises(ConfigError, match="held_out"):
        make_tones(TonesConfig(held_out=[["saw", "note", "major"]]))  # "note" states no mode
    with pytest.raises(ConfigError, match="test_tempi_per_key"):
        td.test_prompts(TonesConfig(test_tempi_per_key=5))
    with pytest.raises(ValueError, match="split"):
        make_tones(SMALL, "val")
    with pytest.raises(ConfigError, match="short_fraction"):
        make_tones(TonesConfig(short_fraction=1.5))
    with pytest.raises(ConfigError, match="min_seconds"):
        make_tones(TonesConfig(short_fraction=0.5, min_seconds=5.0))


def test_short_clips_for_timing_end_early_and_cleanly_and_leave_the_rest_unchanged():
    full = make_tones(TonesConfig(n_train=40, seed=3))
    mixed = make_tones(TonesConfig(n_train=40, seed=3, short_fraction=0.5, min_seconds=1.0))
    short = [(a, b) for a, b in zip(full, mixed) if b.seconds < 4.0]
    assert 10 <= len(short) <= 30  # about half
    for a, b in zip(full, mixed):
        assert b.prompt == a.prompt and 1.0 <= b.seconds <= 4.0
        n = len(b.wave)
        np.testing.assert_array_equal(b.wave[: n - int(0.02 * SAMPLE_RATE)], a.wave[: n - int(0.02 * SAMPLE_RATE)])
        if b.seconds < 4.0:
            assert abs(float(b.wave[-1])) < 0.01  # faded out: no click at the end
        else:
            np.testing.assert_array_equal(b.wave, a.wave)


def test_written_folder_is_an_audio_folder(tmp_path, capsys):
    folder = tmp_path / "tones"
    assert td.main(["--out", str(folder), "--split", "train", "--n-train", "6", "--seed", "3"]) == 0
    assert "wrote 6 train clips" in capsys.readouterr().out
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    items = make_tones(TonesConfig(n_train=6, seed=3))
    assert [r["file_name"] for r in rows] == [f"tone_{i:05d}.wav" for i in range(6)]
    for r, it in zip(rows, items):
        assert r["text"] == it.caption and TonePrompt.from_dict(r) == it.prompt
        assert set(r) == {"file_name", "text", "timbre", "pattern", "key", "mode", "tempo", "seconds"}
        assert r["seconds"] == 4.0
        info = sf.info(str(folder / r["file_name"]))
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (SAMPLE_RATE, 1, NUM_SAMPLES, "PCM_16")
        wave, _ = sf.read(str(folder / r["file_name"]), dtype="float32")
        np.testing.assert_allclose(wave, it.wave, atol=1.5 / 32768)
    ds = MediaFolderDataset(MediaFolderConfig(path=str(folder), modality="audio", sample_rate=SAMPLE_RATE, seconds=4.0))
    assert len(ds) == 6 and {ds[i]["text"] for i in range(6)} == {it.caption for it in items}
    td.write_tones_folder(folder, TonesConfig(n_train=2), "train")  # replaces, not merges
    assert len((folder / "metadata.jsonl").read_text().splitlines()) == 2
    assert not (folder / "tone_00002.wav").exists()
    assert td.main(["--out", str(folder), "--split", "test", "--test-tempi-per-key", "1"]) == 0
    assert "wrote 60 test clips" in capsys.readouterr().out


def test_timbre_free_captions_list_each_train_clip_twice(tmp_path, capsys):
    folder = tmp_path / "tones"
    assert td.main(["--out", str(folder), "--n-train", "5", "--timbre-free-captions"]) == 0
    assert "wrote 5 train clips (10 captions)" in capsys.readouterr().out
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    items = make_tones(TonesConfig(n_train=5))
    for i, it in enumerate(items):
        full, free = rows[2 * i], rows[2 * i + 1]
        assert full["file_name"] == free["file_name"] == f"tone_{i:05d}.wav" and full["text"] == it.caption
        assert free["text"] == td.caption(it.prompt, timbre=False) and it.prompt.timbre not in free["text"]
        assert TonePrompt.from_dict(free) == it.prompt
    free = TonePrompt("saw", "arpeggio", "A", "minor", 120), TonePrompt("organ", "note", "C", None, 80)
    assert [td.caption(p, timbre=False) for p in free] == ["an arpeggio in A minor at 120 bpm",
                                                           "a note C repeated at 80 bpm"]
    with pytest.raises(td.CaptionError):
        parse_caption(td.caption(free[0], timbre=False))  # a train caption, never a scored prompt
    ds = MediaFolderDataset(MediaFolderConfig(path=str(folder), modality="audio", sample_rate=SAMPLE_RATE, seconds=4.0))
    assert len(ds) == 10
    assert td.main(["--out", str(tmp_path / "test"), "--split", "test", "--test-tempi-per-key", "1",
                    "--timbre-free-captions"]) == 0
    assert "wrote 60 test clips (60 captions)" in capsys.readouterr().out  # test prompts keep their timbre
