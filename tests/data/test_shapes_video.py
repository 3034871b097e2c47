"""Tests for mmflow/data/shapes_video.py: the generated moving-shapes clips, their held-out split, captions and MP4s."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

import mmflow.data.shapes_video as sv  # as a module: `test_prompts` is not a pytest test
from mmflow.config import ConfigError
from mmflow.data.shapes import COLOURS, SHAPES, CaptionError, render
from mmflow.data.shapes_video import (BACKGROUNDS, MOTIONS, ClipPrompt, ShapesVideoConfig, all_combos, draw_clip,
                                      held_out_combos, make_clips, parse_caption)
from mmflow.modalities import get_modality

SMALL = ShapesVideoConfig(n=24, seed=3)


def test_same_seed_same_bytes_other_seed_other_clips_and_prefixes():
    a, b = make_clips(SMALL), make_clips(ShapesVideoConfig(n=24, seed=3))
    assert [x.caption for x in a] == [x.caption for x in b]
    assert all(np.array_equal(x.frames, y.frames) for x, y in zip(a, b))
    c = make_clips(ShapesVideoConfig(n=24, seed=4))
    assert sum(x.caption != y.caption for x, y in zip(a, c)) > 15
    d = make_clips(ShapesVideoConfig(n=10, seed=3))  # clip i depends on (seed, split, i) only
    assert all(np.array_equal(x.frames, y.frames) for x, y in zip(d, a[:10]))


@pytest.mark.parametrize("frames", [9, 17])
def test_clips_have_the_asked_frame_count_and_size(frames):
    clips = make_clips(ShapesVideoConfig(n=4, frames=frames))
    assert all(x.frames.shape == (frames, 64, 64, 3) and x.frames.dtype == np.uint8 for x in clips)
    assert all(len(x.track) == frames for x in clips)


def test_a_frame_count_the_video_vae_cannot_take_is_refused_with_the_valid_ones():
    with pytest.raises(ConfigError, match=r"10 frames.*\[9, 13, 17\]"):
        ShapesVideoConfig(frames=10).validate()


def test_held_out_combos_follow_the_rule_and_training_still_sees_every_part():
    cfg = ShapesVideoConfig()
    held = held_out_combos(cfg)
    colours, idx = list(COLOURS), {**{s: i for i, s in enumerate(SHAPES)}, **{m: i for i, m in enumerate(MOTIONS)}}
    assert held == sorted(c for c in all_combos() if (colours.index(c[0]) + idx[c[1]] + idx[c[2]]) % 7 == 0)
    assert len(held) == 46 and len(all_combos()) == 7 * 6 * 8 - 7 * 2  # no rotating circle
    train = [c for c in all_combos() if c not in held]
    for k, names in enumerate((COLOURS, SHAPES, MOTIONS)):
        assert {c[k] for c in train} == set(names)
    for c, s, m in held:
        assert any(t[:2] == (c, s) for t in train) and any(t[1:] == (s, m) for t in train)
    # the train split never shows a held-out combination; the test split is each one on each background
    assert not {x.prompt.combo for x in make_clips(ShapesVideoConfig(n=300))} & set(held)
    tests = sv.test_prompts(cfg)
    assert sorted((p.combo, p.background) for p in tests) == sorted(itertools.product(held, BACKGROUNDS))
    assert [x.prompt for x in make_clips(cfg, "test")] == tests


def test_a_held_out_list_that_hides_a_whole_motion_is_refused():
    every_left = [[c, s, "left"] for c in COLOURS for s in SHAPES]
    with pytest.raises(ConfigError, match="motion"):
        ShapesVideoConfig(held_out=every_left).validate()
    with pytest.raises(ConfigError, match="circle never rotates"):
        ShapesVideoConfig(held_out=[["red", "circle", "clockwise"]]).validate()


def test_captions_parse_back_and_unknown_ones_are_named():
    for x in make_clips(SMALL) + make_clips(SMALL, "test")[::7]:
        assert parse_caption(x.caption) == x.prompt
    assert ClipPrompt("star", "orange", "counterclockwise", "grey").text == \
        "an orange star rotating counterclockwise on a grey background"
    assert parse_caption("A  red circle moving to the left on a BLACK background") == \
        ClipPrompt("circle", "red", "left", "black")
    with pytest.raises(CaptionError, match="a red circle jumping"):
        parse_caption("a red circle jumping on a black background")
    with pytest.raises(CaptionError, match="circle"):
        parse_caption("a red circle rotating clockwise on a white background")


def test_motions_do_what_the_caption_says():
    def mask(frame: np.ndarray, bg: str) -> np.ndarray:
        return np.abs(frame.astype(int) - BACKGROUNDS[bg]).max(-1) > 64

    rng = np.random.default_rng(0)
    for motion in ("left", "right", "up", "down", "growing", "shrinking"):
        clip = draw_clip(ClipPrompt("square", "blue", motion, "black"), 9, rng)
        first, last = mask(clip.frames[0], "black"), mask(clip.frames[-1], "black")
        (y0, x0), (y1, x1) = (np.argwhere(m).mean(0) for m in (first, last))
        moved = {"left": x0 - x1, "right": x1 - x0, "up": y0 - y1, "down": y1 - y0}
        if motion in moved:
            assert moved[motion] >= 27 and first.sum() == pytest.approx(last.sum(), rel=0.1)
        else:
            assert (last.sum() / first.sum()) ** (1 if motion == "growing" else -1) > 3.0
    # clockwise as a viewer sees it (y points down): an upright triangle turned 90 degrees points right,
    # its base on the left
    m = np.abs(render([("triangle", "red", 32, 32, 30)], (255, 255, 255), [90.0]).astype(int) - 255).max(-1) > 64
    cols = np.nonzero(m.any(0))[0]
    assert m[:, cols[0]].sum() > 20 and m[:, cols[-1]].sum() < 5
    turning = draw_clip(ClipPrompt("triangle", "red", "clockwise", "white"), 9, rng)
    assert [round(t[3]) for t in turning.track][::4] == [0, 60, 120]


def test_written_folder_decodes_with_the_video_reader(tmp_path, capsys):
    assert sv.main(["--out", str(tmp_path / "train"), "--split", "train", "--n", "6", "--frames", "13"]) == 0
    assert "wrote 6 train clips of 13 frames" in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "train" / "metadata.jsonl").read_text().splitlines()]
    items = make_clips(ShapesVideoConfig(n=6, frames=13))
    for row, item in zip(rows, items, strict=True):
        p = item.prompt
        assert row == {"file_name": row["file_name"], "text": item.caption, "shape": p.shape, "colour": p.colour,
                       "motion": p.motion, "background": p.background, "num_frames": 13, "fps": 8.0}
        video, info = get_modality("video").read_whole(tmp_path / "train" / row["file_name"])
        assert tuple(video.shape) == (3, 13, 64, 64) and info["fps"] == pytest.approx(8.0)
        decoded = ((video.permute(1, 2, 3, 0) + 1) * 127.5).numpy()
        assert np.abs(decoded - item.frames).mean() < 3.0  # H.264 at crf 17: close to the drawn frames
    assert sorted(p.name for p in (tmp_path / "train" / "videos").iterdir()) == [f"{i:05d}.mp4" for i in range(6)]
