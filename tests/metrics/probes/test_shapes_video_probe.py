"""Tests for mmflow/metrics/probes/shapes_video.py: the shapes video probe is right on real clips (through
MP4) and wrong exactly where a clip differs from its prompt (motion reversed, colour, background)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmflow.data.shapes import COLOURS, render
from mmflow.data.shapes_video import (BACKGROUNDS, ClipItem, ClipPrompt, ShapesVideoConfig, clip_tensor, draw_clip,
                                      make_clips, write_clips_folder)
from mmflow.evaluation.config import EvalConfig
from mmflow.evaluation.run import evaluate_folders
from mmflow.metrics.probes import ProbeInputError, ShapesProbe, load_probe
from mmflow.metrics.probes.checks import prompt_check
from mmflow.metrics.probes.shapes_video import ATTRIBUTES, score_shapes_video, turn_degrees

# a small test split: 4 held-out combinations (one per motion family) on 3 backgrounds = 12 clips
HELD = [["red", "star", "clockwise"], ["green", "cross", "counterclockwise"], ["blue", "circle", "left"],
        ["yellow", "triangle", "shrinking"]]
CFG = ShapesVideoConfig(n=16, seed=1, held_out=HELD)
KEYS = (*ATTRIBUTES, "all")


@pytest.fixture(scope="module")
def probe() -> ShapesProbe:
    return load_probe(name="shapes")


def as_tensor(items: list[ClipItem]) -> torch.Tensor:
    return torch.stack([clip_tensor(it.frames) for it in items])  # (B, 3, T, 64, 64) in [-1, 1]


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[torch.Tensor, list[dict]]:
    """The small test split written to H.264 MP4 and decoded again by mmflow's video reader."""
    from mmflow.modalities import get_modality

    folder = write_clips_folder(tmp_path_factory.mktemp("clips") / "test", CFG, "test")
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    clips = torch.stack([get_modality("video").read_whole(folder / r["file_name"])[0] for r in rows])
    return clips, rows


def test_right_on_real_clips_through_mp4_and_wrong_when_played_backwards(probe, written):
    clips, rows = written
    s = score_shapes_video(clips, rows, probe)  # metadata rows as prompts
    assert s["n"] == 12 and all(s[k] == 1.0 for k in KEYS), {k: s[k] for k in KEYS}
    assert s == score_shapes_video(clips, [r["text"] for r in rows], probe)  # captions read the same
    back = score_shapes_video(clips.flip(2), rows, probe)  # time reversed: every motion is the opposite one
    assert back["motion"] == 0.0 and back["all"] == 0.0 and back["colour"] == back["background"] == 1.0
    flipped = {"left": "right", "clockwise": "counterclockwise", "counterclockwise": "clockwise",
               "shrinking": "growing"}
    assert all(it["pred"]["motion"] == flipped[r["motion"]] for it, r in zip(back["items"], rows))


def test_right_on_train_clips_of_every_length(probe):
    for frames in (9, 17):
        items = make_clips(ShapesVideoConfig(n=12, frames=frames, seed=2))
        s = score_shapes_video(as_tensor(items), [it.prompt for it in items], probe)
        assert all(s[k] == 1.0 for k in KEYS), (frames, {k: s[k] for k in KEYS})


def test_wrong_where_the_clip_differs_from_its_prompt(probe):
    items = make_clips(ShapesVideoConfig(n=10, seed=4))
    prompts = [it.prompt for it in items]
    names = list(COLOURS)

    def redrawn(change) -> torch.Tensor:  # each clip drawn again along its own track, one attribute changed
        clips = []
        for it in items:
            p = change(it.prompt)
            clips.append(np.stack([render([(p.shape, p.colour, x, y, s)], BACKGROUNDS[p.background], [a])
                                   for x, y, s, a in it.track]))
        return torch.stack([clip_tensor(c) for c in clips])

    assert torch.equal(redrawn(lambda p: p), as_tensor(items))
    recoloured = redrawn(lambda p: ClipPrompt(p.shape, names[(names.index(p.colour) + 3) % 7], p.motion, p.background))
    s = score_shapes_video(recoloured, prompts, probe)
    assert s["colour"] == 0.0 and s["all"] == 0.0 and s["motion"] == s["shape"] == s["background"] == 1.0
    swap = {"white": "black", "black": "grey", "grey": "white"}
    s = score_shapes_video(redrawn(lambda p: ClipPrompt(p.shape, p.colour, p.motion, swap[p.background])), prompts,
                           probe)
    assert s["background"] == 0.0 and s["motion"] == s["colour"] == 1.0
    still = as_tensor(items)[:, :, :1].expand(-1, -1, 9, -1, -1)  # the first frame held: no motion at all
    s = score_shapes_video(still, prompts, probe)
    assert s["motion"] == 0.0 and all(it["pred"]["motion"] == "still" for it in s["items"])


def test_turn_degrees_measures_the_rotation_of_a_cross():
    # a cross's second moments are isotropic (no orientation from moments); the mask matching is not fooled
    clip = draw_clip(ClipPrompt("cross", "blue", "counterclockwise", "white"), 9, np.random.default_rng(0))
    alphas = np.abs(clip.frames.astype(float) / 255 - 1).max(-1)
    assert turn_degrees(alphas) == pytest.approx(-90.0, abs=4.0)
    assert turn_degrees(alphas[::-1]) == pytest.approx(90.0, abs=4.0)


def test_bad_input_is_refused_with_the_expected_shape(probe):
    with pytest.raises(ProbeInputError, match=r"\(B, 3, T >= 2, 64, 64\)"):
        score_shapes_video(torch.zeros(2, 3, 64, 64), ["a red circle growing on a white background"] * 2, probe)
    with pytest.raises(ProbeInputError, match="2 clips but 1 prompts"):
        score_shapes_video(torch.zeros(2, 3, 9, 64, 64), ["a red circle growing on a white background"], probe)


def test_the_prompt_check_scores_a_video_folder(tmp_path, written):
    clips, rows = written
    got = prompt_check("shapes_video", clips, [r["text"] for r in rows])
    assert got == {k: 1.0 for k in KEYS}
    folder = write_clips_folder(tmp_path / "gen", ShapesVideoConfig(n=6, seed=5))
    cfg = EvalConfig(metrics=[], check="shapes_video")
    right = evaluate_folders(None, str(folder), cfg, tmp_path / "a.json", progress=False).report.metrics
    assert right["shapes_video_all"] == 1.0 and right["shapes_video_motion"] == 1.0
    meta = folder / "metadata.jsonl"
    rows = [json.loads(line) for line in meta.read_text().splitlines()]
    texts = [r["text"] for r in rows]
    for r, text in zip(rows, texts[3:] + texts[:3]):  # each clip now carries another clip's caption
        r["text"] = text
    meta.write_text("".join(json.dumps(r) + "\n" for r in rows))
    wrong = evaluate_folders(None, str(folder), cfg, tmp_path / "b.json", progress=False).report.metrics
    assert wrong["shapes_video_all"] < 0.5


def test_the_concept_diagonal_is_read_as_up_right_and_nothing_else_is(probe):
    from mmflow.data.shapes_video_concept import VideoConceptConfig, make_video_concept

    items = make_video_concept(VideoConceptConfig(n_concept=6, n_test=6, n_prior=0), "test")
    clips, rows = as_tensor(items), [it.caption for it in items]
    s = score_shapes_video(clips, rows, probe)
    assert s["motion"] == 1.0 and s["all"] == 1.0, [it["measured"] for it in s["items"]]
    back = score_shapes_video(clips.flip(2), rows, probe)  # down and to the left: read by its larger axis
    assert back["motion"] == 0.0 and {it["pred"]["motion"] for it in back["items"]} <= {"left", "down"}
