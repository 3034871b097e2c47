"""Tests for mmflow/data/shapes_video_concept.py: the new-motion concept set, its held-out prompts and its prior."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import numpy as np
import pytest

from mmflow.config import ConfigError
from mmflow.data.shapes import COLOURS, SHAPES
from mmflow.data.shapes_video import BACKGROUNDS, ShapesVideoConfig, make_clips, parse_caption
from mmflow.data.shapes_video_concept import (VideoConceptConfig, main, make_video_concept, video_concept_prompts,
                                              write_video_concept_folder)

SMALL = VideoConceptConfig(n_concept=12, n_test=10, n_prior=3, seed=2)


def _combo(p) -> tuple[str, str, str]:
    return p.colour, p.shape, p.background


def test_train_and_test_prompts_are_disjoint_combinations_of_the_new_motion():
    train, test = video_concept_prompts(SMALL, "train"), video_concept_prompts(SMALL, "test")
    assert len(train) == 12 and len(test) == 10 and {p.motion for p in train + test} == {"up-right"}
    assert not {_combo(p) for p in train} & {_combo(p) for p in test}  # the test measures the word, not memory
    every = set(itertools.product(COLOURS, SHAPES, BACKGROUNDS))
    assert {_combo(p) for p in train + test} <= every
    counts = Counter(p.shape for p in train)
    assert set(counts) == set(SHAPES) and max(counts.values()) - min(counts.values()) <= 1  # shapes in turn
    assert len({p.colour for p in test}) > 3  # spread over the rest, not its head
    assert video_concept_prompts(SMALL) == train and video_concept_prompts(VideoConceptConfig(n_concept=12)) != train
    # a larger concept set takes the shapes' next combinations: the smaller one is its prefix
    assert video_concept_prompts(VideoConceptConfig(n_concept=18, seed=2))[:12] == train


def test_clips_move_up_and_to_the_right_and_the_prior_is_the_original_train_split():
    a, b = make_video_concept(SMALL), make_video_concept(SMALL)
    assert len(a) == 15 and all(np.array_equal(x.frames, y.frames) for x, y in zip(a, b))
    for it in a[:12]:
        assert parse_caption(it.caption) == it.prompt and "moving up and to the right" in it.caption
        (x0, y0, s, _), (x1, y1, _, _) = it.track[0], it.track[-1]
        assert 20.0 <= x1 - x0 <= 25.0 and 20.0 <= y0 - y1 <= 25.0  # y grows downwards
        assert min(x0, y1) - s / 2 >= 0 and max(x1, y0) + s / 2 <= 64  # wholly inside the image
        assert it.frames.shape == (9, 64, 64, 3)
    prior = make_clips(ShapesVideoConfig(n=3, seed=2), "train")
    assert all(np.array_equal(x.frames, y.frames) and x.prompt == y.prompt for x, y in zip(a[12:], prior))
    assert len(make_video_concept(SMALL, "test")) == 10  # no prior in the test split


@pytest.mark.parametrize("field, value, key", [("motion", "left", "motion"), ("n_concept", 0, "n_concept"),
                                               ("n_concept", 126, "n_concept"), ("n_test", 200, "n_test"),
                                               ("n_prior", -1, "n_prior"), ("frames", 10, "frames")])
def test_config_errors_name_the_key(field, value, key):
    with pytest.raises(ConfigError) as info:
        video_concept_prompts(VideoConceptConfig(**{field: value}))
    assert info.value.key == key


def test_written_folder_and_command_line(tmp_path, capsys):
    folder = write_video_concept_folder(tmp_path / "c", VideoConceptConfig(n_concept=2, n_test=2, n_prior=1))
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert [r["motion"] for r in rows] == ["up-right", "up-right", rows[2]["motion"]] and len(rows) == 3
    assert all((folder / r["file_name"]).is_file() and r["num_frames"] == 9 for r in rows)
    assert main(["--out", str(tmp_path / "t"), "--split", "test", "--n-concept", "4", "--n-test", "3"]) == 0
    assert "wrote 3 test clips of the up-right concept" in capsys.readouterr().out
