"""The music prompt check: music16k captions parse (and others are refused by name); the shipped probe and the
tempo estimate read synthetic melodies of known key, mode and tempo (no shared data needed)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from probe_media import StubProbe, melody
from probe_media import music_caption as caption
from torch import Tensor

from mmflow.evaluation.config import CHECKS, EvalConfig
from mmflow.metrics.probes.base import ProbeInputError
from mmflow.metrics.probes.checks import PROMPT_CHECKS, prompt_check
from mmflow.metrics.probes.music import INSTRUMENTS, KEYS, MODES, NUM_SAMPLES
from mmflow.metrics.probes.music_check import (BadMusicCaption, fit_length, parse_music_caption, score_music,
                                               tempo_right)


@pytest.fixture(scope="module")
def melodies() -> tuple[Tensor, list[tuple[int, str, int]]]:
    """12 melodies: every key, both modes, four tempi."""
    labels = [(k, MODES[k % 2], (84, 100, 120, 132)[k % 4]) for k in range(12)]
    return torch.stack([melody(*lab) for lab in labels]), labels


def stub(answers: list[tuple[str, str, str]]) -> StubProbe:
    """A stub music probe predicting (key, mode, instrument) for each item in turn."""
    return StubProbe({"key": KEYS, "mode": MODES, "instrument": INSTRUMENTS},
                     {a: [x[i] for x in answers] for i, a in enumerate(("key", "mode", "instrument"))})


@pytest.mark.parametrize("instrument", INSTRUMENTS)
def test_every_instrument_parses(instrument: str) -> None:
    p = parse_music_caption(caption(instrument, "D", "major", 120))
    assert (p.instrument, p.key, p.mode, p.bpm) == (instrument, "D", "major", 120.0)


@pytest.mark.parametrize("spelling, key", [("Db", "C#"), ("C#", "C#"), ("F#", "F#"), ("Gb", "F#"), ("Bb", "Bb"),
                                           ("A#", "Bb"), ("B", "B"), ("Ab", "Ab"), ("Eb", "Eb")])
def test_keys_are_read_in_the_probes_spelling(spelling: str, key: str) -> None:
    assert parse_music_caption(caption("marimba", spelling, "minor", 96, chords=True)).key == key


def test_dataset_caption_forms_parse() -> None:
    p = parse_music_caption("a melancholic cello melody in A minor at 96 bpm with chords")  # the order
    assert (p.instrument, p.key, p.mode, p.bpm) == ("cello", "A", "minor", 96.0)
    p = parse_music_caption("a cheerful electric bass melody in G major at 133 bpm")  # not "electric piano"
    assert p.instrument == "electric bass"
    p = parse_music_caption("A  Cheerful Piano melody in E major at 84 BPM")
    assert (p.instrument, p.mode, p.bpm) == ("piano", "major", 84.0)


def test_a_caption_may_ask_some_attributes() -> None:
    p = parse_music_caption("a melancholic melody")  # a mood alone asks the mode
    assert (p.mode, p.key, p.instrument, p.bpm) == ("minor", None, None, None)
    p = parse_music_caption("an organ melody at 100 bpm")
    assert (p.instrument, p.bpm, p.mode) == ("organ", 100.0, None)
    p = parse_music_caption("something in F#")  # a key without a mode
    assert (p.key, p.mode) == ("F#", None)


def test_captions_it_cannot_score_are_refused_by_name() -> None:
    with pytest.raises(BadMusicCaption, match="'a dog barking'"):
        parse_music_caption("a dog barking")
    with pytest.raises(BadMusicCaption, match="'banjo'.*one of the music probe's"):
        parse_music_caption("a cheerful banjo melody in D major at 120 bpm")
    with pytest.raises(BadMusicCaption, match="contradict its mode 'minor'"):
        parse_music_caption("a cheerful violin melody in A minor at 96 bpm")
    with pytest.raises(BadMusicCaption, match="contradict each other"):
        parse_music_caption("a cheerful flute melody turning melancholic")
    with pytest.raises(BadMusicCaption, match="'a piano melody at 0 bpm'"):
        parse_music_caption("a piano melody at 0 bpm")
    with pytest.raises(BadMusicCaption):  # through the check itself
        score_music(torch.zeros(1, 1, NUM_SAMPLES), ["silence"], stub([("C", "major", "piano")]))


def test_tempo_tolerance_and_octaves() -> None:
    assert tempo_right(104.9, 100) and tempo_right(95.1, 100) and not tempo_right(105.2, 100)
    assert not tempo_right(200.0, 100) and tempo_right(200.0, 100, octave=True) and tempo_right(51.0, 100, octave=True)
    assert not tempo_right(150.0, 100, octave=True)


def test_fit_length_cuts_and_pads() -> None:
    x = torch.rand(2, 1, 3 * NUM_SAMPLES // 2)
    assert torch.equal(fit_length(x), x[..., :NUM_SAMPLES])
    short = fit_length(x[..., :40000])
    assert short.shape == (2, 1, NUM_SAMPLES) and torch.equal(short[..., :40000], x[..., :40000])
    assert not short[..., 40000:].any()


def test_check_plumbing_with_a_stub_probe() -> None:
    waves = torch.cat([melody(2, "major", 120, seconds=2.5), melody(9, "minor", 96, seconds=2.5),
                       melody(1, "major", 100, seconds=2.5)])[:, None] * 2  # (3, 1, 40000), out of range
    probe = stub([("D", "major", "violin"), ("A", "major", "cello"), ("C#", "major", "piano")])
    prompts = [caption("violin", "D", "major", 120), caption("cello", "A", "minor", 96), "a piano melody in Db"]
    s = score_music(waves, prompts, probe, batch_size=2)
    assert [tuple(x.shape) for x in probe.seen] == [(2, 1, NUM_SAMPLES), (1, 1, NUM_SAMPLES)]  # padded to 4 s
    assert all(x.abs().max() <= 1.0 for x in probe.seen)
    assert s["key"] == 1.0 and s["mode"] == 0.5 and s["instrument"] == 1.0  # Db asked, C# read: one key
    assert s["tempo"] == 1.0 and s["tempo_octave"] == 1.0 and s["all"] == pytest.approx(2 / 3) and s["n"] == 3
    assert s["items"][1]["pred"]["mode"] == "major" and not s["items"][1]["all"]
    assert "tempo" not in s["items"][2] and "mode" not in s["items"][2] and s["items"][2]["all"]
    only_instrument = score_music(waves[:1], ["a flute melody"], stub([("C", "major", "flute")]))
    assert math.isnan(only_instrument["tempo"]) and only_instrument["instrument"] == 1.0


def test_bad_clips_are_refused() -> None:
    probe = stub([])
    with pytest.raises(ProbeInputError, match="1 clips but 2 prompts"):
        score_music(torch.zeros(1, 1, NUM_SAMPLES), ["a piano melody"] * 2, probe)
    with pytest.raises(ProbeInputError, match=r"\(1, 64000\)"):
        score_music(torch.zeros(1, NUM_SAMPLES), ["a piano melody"], probe)
    with pytest.raises(ProbeInputError, match=r"\(1, 2, 64000\)"):
        score_music(torch.zeros(1, 2, NUM_SAMPLES), ["a piano melody"], probe)
    with pytest.raises(ProbeInputError, match="L >= 24000"):
        score_music(torch.zeros(1, 1, 16000), ["a piano melody"], probe)


def test_the_shipped_probe_reads_key_mode_and_tempo_of_synthetic_melodies(melodies) -> None:
    waves, labels = melodies
    # the instrument is no GM one: asked as the probe reads it, so only key, mode and tempo are tested here
    read = score_music(waves, [caption("piano", KEYS[k], m, b) for k, m, b in labels])
    asked = [caption(it["pred"]["instrument"], KEYS[k], m, b) for it, (k, m, b) in zip(read["items"], labels)]
    s = prompt_check("music", waves, asked)
    assert s["key"] >= 0.9 and s["mode"] >= 0.9 and s["tempo"] >= 0.9 and s["all"] >= 0.8, s
    assert set(s) == {"key", "mode", "instrument", "tempo", "tempo_octave", "all"}
    # the same melodies asked for a key a fifth away, the other mode, a tempo 25% faster
    other = [caption("piano", KEYS[(k + 7) % 12], MODES[1 - MODES.index(m)], round(b * 1.25)) for k, m, b in labels]
    wrong = prompt_check("music", waves, other)
    assert wrong["key"] <= 0.1 and wrong["mode"] <= 0.1 and wrong["tempo"] <= 0.1, wrong


def test_generated_lengths_are_read(melodies) -> None:
    """A 3 s or 5 s melody (a model sampled at another length) keeps its key, mode and tempo."""
    _, labels = melodies
    for seconds in (3.0, 5.0):
        waves = torch.stack([melody(k, m, b, seconds) for k, m, b in labels[:6]])
        s = score_music(waves, [caption("piano", KEYS[k], m, b) for k, m, b in labels[:6]])
        assert s["key"] >= 5 / 6 and s["mode"] >= 5 / 6 and s["tempo"] >= 5 / 6, (seconds, s)


def test_the_check_is_registered_for_recipes() -> None:
    assert set(CHECKS) == set(PROMPT_CHECKS) and "music" in CHECKS
    EvalConfig(check="music").validate()


def test_every_key_and_mode_pair_is_a_caption() -> None:
    for key, mode in itertools.product(KEYS, MODES):
        p = parse_music_caption(caption("choir", key, mode, 80))
        assert (p.key, p.mode, p.instrument) == (key, mode, "choir")
