"""Tiny probes learn synthetic attributes, round-trip through their model folder, and refuse wrong shapes."""

from __future__ import annotations

import pytest
import torch
from probe_media import arpeggios, moving_squares

from mmflow.metrics.probes import EmojiVideoProbe, MusicProbe, ProbeInputError, load_probe
from mmflow.metrics.probes.emoji_video import emoji_video_config
from mmflow.metrics.probes.music import INSTRUMENTS, music_config
from mmflow.metrics.probes.train import evaluate, fit_probe, prepare_all
from mmflow.model_io import save_model


def _tiny_video_probe() -> EmojiVideoProbe:
    torch.manual_seed(0)
    return EmojiVideoProbe(emoji_video_config(attributes={"motion": ["move_left", "move_right"],
                                                          "background": ["red", "blue"]}, width=8, feature_dim=16))


def test_video_probe_learns_direction_and_background():
    probe = _tiny_video_probe()
    clips, motion, background = moving_squares(64, seed=0)
    test, t_motion, t_background = moving_squares(32, seed=1)
    fit_probe(probe, prepare_all(probe, clips), {"motion": motion, "background": background}, epochs=12,
              batch_size=16, lr=3e-3)
    acc = probe.accuracy(test, {"motion": t_motion, "background": t_background})
    assert acc["motion"] >= 0.9 and acc["background"] >= 0.9, acc  # chance: 0.5
    # predict and evaluate (the trainer's path) agree
    prepared = evaluate(probe, prepare_all(probe, test), {"motion": t_motion, "background": t_background})
    assert prepared == pytest.approx(acc)


def test_music_probe_learns_key_mode_instrument():
    torch.manual_seed(0)
    probe = MusicProbe(music_config(width=16, feature_dim=32))
    waves, key, mode, inst = arpeggios(64, seed=0)
    test, t_key, t_mode, t_inst = arpeggios(32, seed=1)
    fit_probe(probe, prepare_all(probe, waves), {"key": key, "mode": mode, "instrument": inst}, epochs=60,
              batch_size=16, lr=3e-3)
    acc = probe.accuracy(test, {"key": t_key, "mode": t_mode, "instrument": [INSTRUMENTS[int(i)] for i in t_inst]})
    # chance: 1/12, 1/2, 1/2
    assert acc["key"] >= 0.7 and acc["mode"] >= 0.8 and acc["instrument"] >= 0.9, acc


def test_music_key_logits_are_transposition_equivariant():
    torch.manual_seed(0)
    probe = MusicProbe(music_config(width=16, feature_dim=32)).eval()
    prepared = probe.prepare(arpeggios(3, seed=2)[0])
    logits = probe.prepared_logits(prepared)
    for k in (1, 5):
        shifted = probe.prepared_logits({**prepared, "profiles": prepared["profiles"].roll(k, dims=-1)})
        torch.testing.assert_close(shifted["key"], logits["key"].roll(k, dims=-1))  # the same key, k semitones up
        torch.testing.assert_close(shifted["mode"], logits["mode"])
        torch.testing.assert_close(probe.embed({**prepared, "profiles": prepared["profiles"].roll(k, dims=-1)}),
                                   probe.embed(prepared))  # features do not depend on the key


def test_save_load_round_trip(tmp_path):
    probe = _tiny_video_probe().eval()
    probe.config.held_out_accuracy = {"motion": 0.75, "background": 1.0}
    save_model(probe, tmp_path / "p")
    loaded = load_probe(tmp_path / "p")
    assert isinstance(loaded, EmojiVideoProbe)
    assert loaded.config == probe.config
    clips = moving_squares(3, seed=2)[0]
    torch.testing.assert_close(loaded.features(clips), probe.features(clips))
    pred = loaded.predict(clips)
    assert set(pred) == {"motion", "background"}
    assert all(p.shape == (3,) and p.dtype == torch.long for p in pred.values())
    assert loaded.features(clips).shape == (3, 16)


def test_music_probe_shapes():
    probe = MusicProbe(music_config()).eval()
    waves = arpeggios(2, seed=3)[0]
    pred = probe.predict(waves)
    assert {a: p.shape for a, p in pred.items()} == {"key": (2,), "mode": (2,), "instrument": (2,)}
    assert all(int(p.max()) < len(probe.attributes[a]) for a, p in pred.items())
    assert probe.features(waves).shape == (2, 128)


def test_wrong_shape_names_the_expected_one():
    with pytest.raises(ProbeInputError, match=r"\(B, 3, 16, 64, 64\).*got \(2, 3, 8, 64, 64\)"):
        _tiny_video_probe().predict(torch.zeros(2, 3, 8, 64, 64))
    with pytest.raises(ProbeInputError, match=r"\(B, 1, 64000\).*got \(2, 32000\)"):
        MusicProbe(music_config()).features(torch.zeros(2, 32000))


def test_bad_labels_are_named():
    probe = _tiny_video_probe()
    clips = moving_squares(2, seed=4)[0]
    with pytest.raises(ProbeInputError, match="unknown motion labels \\['zoom_in'\\]"):
        probe.accuracy(clips, {"motion": ["move_left", "zoom_in"]})
    with pytest.raises(ProbeInputError, match="no attribute 'tempo'"):
        probe.accuracy(clips, {"tempo": [0, 1]})
    with pytest.raises(ProbeInputError, match="2 items but 3 motion labels"):
        probe.accuracy(clips, {"motion": [0, 1, 1]})
