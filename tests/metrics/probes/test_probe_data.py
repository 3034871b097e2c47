"""The fit / held-out split by file name, and reading a labelled folder (with its decode cache)."""

from __future__ import annotations

import json

import pytest
import soundfile as sf
import torch
from probe_media import arpeggios

from mmflow.errors import MissingInput
from mmflow.metrics.probes.data import MissingLabel, is_held_out, load_labelled_folder
from mmflow.metrics.probes.music import KEYS, pitch_class, read_wave
from mmflow.metrics.probes.train import probe_set


def test_split_is_a_fixed_fifth():
    names = [f"audio/{i:04d}.wav" for i in range(2000)]
    held = [is_held_out(n) for n in names]
    assert 0.17 < sum(held) / len(names) < 0.23
    assert held == [is_held_out(n) for n in names]  # a pure function of the name
    assert is_held_out(names[0], 0.0) is False and is_held_out(names[0], 1.0) is True


def test_pitch_classes():
    assert [pitch_class(k) for k in KEYS] == list(range(12))
    assert pitch_class("A#") == pitch_class("Bb") == 10 and pitch_class("Db") == 1 and pitch_class("Cb") == 11
    with pytest.raises(ValueError, match="'H' is not a key name"):
        pitch_class("H")


def _folder(tmp_path, n=10, drop=None):
    waves, key, mode, _ = arpeggios(n, seed=5)
    (tmp_path / "audio").mkdir(parents=True)
    lines = []
    for i in range(n):
        sf.write(tmp_path / f"audio/{i:04d}.wav", waves[i, 0].numpy(), 16000, subtype="PCM_16")
        row = {"file_name": f"audio/{i:04d}.wav", "key": KEYS[int(key[i])], "mode": ["major", "minor"][int(mode[i])],
               "instrument": "organ"}
        row.pop(drop, None)
        lines.append(json.dumps(row))
    (tmp_path / "metadata.jsonl").write_text("\n".join(reversed(lines)) + "\n")  # order does not matter
    return waves, key


def test_labelled_folder_split_and_cache(tmp_path):
    waves, key = _folder(tmp_path / "d")
    spec = probe_set("music")
    items = load_labelled_folder(tmp_path / "d", spec.labels, spec.read, tag="music", cache=tmp_path / "cache")
    assert items.names == sorted(items.names) and items.media.shape == (10, 1, 64000)
    torch.testing.assert_close(items.labels["key"], key)
    torch.testing.assert_close(items.media[3], read_wave(tmp_path / "d/audio/0003.wav"))
    assert len(list((tmp_path / "cache").iterdir())) == 1
    again = load_labelled_folder(tmp_path / "d", spec.labels, spec.read, tag="music", cache=tmp_path / "cache")
    torch.testing.assert_close(again.media, items.media, atol=1e-3, rtol=0)  # the float16 cache
    fit, held = items.split(0.5)
    assert sorted(fit.names + held.names) == items.names and not set(fit.names) & set(held.names)
    assert all(is_held_out(n, 0.5) for n in held.names)


def test_missing_label_and_folder(tmp_path):
    _folder(tmp_path / "d", n=2, drop="mode")
    spec = probe_set("music")
    with pytest.raises(MissingLabel, match="metadata.jsonl: a line lacks 'mode'"):
        load_labelled_folder(tmp_path / "d", spec.labels, spec.read, tag="music", cache=None)
    with pytest.raises(MissingInput, match="metadata.jsonl: missing"):
        load_labelled_folder(tmp_path / "none", spec.labels, spec.read, tag="music", cache=None)
