"""Tests for mmflow/data/shapes_concept.py: the new-colour concept set, its held-out prompts and its prior share."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

import mmflow.data.shapes_concept as sc
from mmflow.config import ConfigError
from mmflow.data.shapes import PALETTE, POSITIONS, SHAPES, SIZES, ShapePrompt, ShapesConfig, make_shapes, parse_caption
from mmflow.data.shapes_concept import ConceptConfig, concept_prompts, make_concept

SMALL = ConceptConfig(n_concept=14, n_prior_one=5, n_prior_two=3, seed=2)


def test_train_and_test_prompts_split_every_combination_of_the_new_colour():
    train, test = concept_prompts(SMALL, "train"), concept_prompts(SMALL, "test")
    combos = [(o.shape, o.position, o.size) for p in train + test for o in p.objects]
    assert sorted(combos) == sorted(itertools.product(SHAPES, POSITIONS, SIZES))  # disjoint, and all of them
    assert {o.colour for p in train + test for o in p.objects} == {"cyan"} and len(train) == 14
    counts = Counter(p.objects[0].shape for p in train)
    assert set(counts) == set(SHAPES) and max(counts.values()) - min(counts.values()) <= 1  # shapes in turn
    other = concept_prompts(ConceptConfig(n_concept=14, seed=3))
    assert other != train and concept_prompts(SMALL) == train  # seeded, deterministic
    # a larger concept set takes the shapes' next combinations: the smaller one is its prefix
    assert concept_prompts(ConceptConfig(n_concept=20, seed=2))[:14] == train


def test_items_draw_their_captions_and_the_prior_is_the_original_train_split():
    a, b = make_concept(SMALL), make_concept(SMALL)
    assert [n for n, _ in a] == [f"concept_{i:05d}.png" for i in range(14)] + \
        [f"one_{i:05d}.png" for i in range(5)] + [f"two_{i:05d}.png" for i in range(3)]
    assert all(np.array_equal(x.image, y.image) for (_, x), (_, y) in zip(a, b))
    for _, it in a[:14]:
        (x, y), o = it.centres[0], it.prompt.objects[0]
        assert tuple(it.image[int(y), int(x)]) == PALETTE["cyan"] and parse_caption(it.caption) == it.prompt
    prior = make_shapes(ShapesConfig(n_one=5, n_two=3, seed=2))
    assert all(np.array_equal(x.image, y.image) and x.prompt == y.prompt for (_, x), y in zip(a[14:], prior))
    test = make_concept(SMALL, "test")
    assert [it.prompt for _, it in test] == concept_prompts(SMALL, "test")


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="colour.*'red'"):
        concept_prompts(ConceptConfig(colour="red"))
    with pytest.raises(ConfigError, match="n_concept"):
        concept_prompts(ConceptConfig(n_concept=108))
    with pytest.raises(ConfigError, match="n_prior_one"):
        make_concept(ConceptConfig(n_prior_one=-1))
    with pytest.raises(ValueError, match="split"):
        concept_prompts(SMALL, "val")


def test_written_folder(tmp_path, capsys):
    folder = tmp_path / "concept"
    assert sc.main(["--out", str(folder), "--n-concept", "6", "--n-prior-one", "2", "--n-prior-two", "1"]) == 0
    assert "wrote 9 train images of the cyan concept" in capsys.readouterr().out
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    named = make_concept(ConceptConfig(n_concept=6, n_prior_one=2, n_prior_two=1))
    assert [r["file_name"] for r in rows] == [n for n, _ in named]
    for r, (name, it) in zip(rows, named):
        assert r["text"] == it.caption and ShapePrompt.from_dict(r) == it.prompt
        assert np.array_equal(np.asarray(Image.open(folder / name).convert("RGB")), it.image)
