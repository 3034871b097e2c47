"""Tests for mmflow/data/shapes.py: the generated compositional set, its held-out split and its captions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import mmflow.data.shapes as sd  # as a module: `test_prompts` is not a pytest test
from mmflow.config import ConfigError
from mmflow.data.media_folder import MediaFolderConfig, MediaFolderDataset
from mmflow.data.shapes import (COLOURS, EXTRA_COLOURS, PALETTE, POSITIONS, SHAPES, SIDE, CaptionError, ShapePrompt,
                                ShapeSpec, ShapesConfig, held_out_pairs, make_shapes, parse_caption, position_of,
                                relation_of, render)
from mmflow.metrics.probes.shapes import hue_degrees

SMALL = ShapesConfig(n_one=40, n_two=20, n_test_two=12, seed=3)


def pairs_of(prompt: ShapePrompt) -> set[tuple[str, str]]:
    return {(o.colour, o.shape) for o in prompt.objects}


def test_same_seed_same_bytes_other_seed_other_images():
    a, b = make_shapes(SMALL), make_shapes(ShapesConfig(n_one=40, n_two=20, seed=3))
    assert len(a) == 60 and [x.caption for x in a] == [x.caption for x in b]
    assert all(x.image.dtype == np.uint8 and x.image.shape == (64, 64, 3) for x in a)
    assert b"".join(x.image.tobytes() for x in a) == b"".join(x.image.tobytes() for x in b)
    c = make_shapes(ShapesConfig(n_one=40, n_two=20, seed=4))
    assert sum(x.caption != y.caption for x, y in zip(a, c)) > 30
    # item i depends on (seed, split, kind, i) only: a smaller set is a prefix of a larger one, per kind
    d = make_shapes(ShapesConfig(n_one=10, n_two=5, seed=3))
    assert [x.caption for x in d] == [x.caption for x in a[:10] + a[40:45]]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(d, a[:10] + a[40:45]))


def test_held_out_pairs_follow_the_documented_rule():
    held = held_out_pairs(ShapesConfig())
    assert ("purple", "triangle") in held and len(held) == len(COLOURS)
    assert held == sorted((c, SHAPES[(list(COLOURS).index(c) + 3) % len(SHAPES)]) for c in COLOURS)
    # every colour and every shape still has partners in training
    assert {c for c, _ in held} == set(COLOURS) and {s for _, s in held} == set(SHAPES)
    assert held_out_pairs(ShapesConfig(held_out=[["red", "circle"]])) == [("red", "circle")]
    assert held_out_pairs(ShapesConfig(colours=["red", "purple"], shapes=["triangle", "star"])) == [
        ("purple", "triangle"), ("red", "star")]


def test_held_out_combinations_never_in_train_and_in_every_test_prompt():
    cfg = ShapesConfig(n_one=300, n_two=150, n_test_two=40, seed=0)
    held = set(held_out_pairs(cfg))
    train = make_shapes(cfg)
    seen = set().union(*(pairs_of(x.prompt) for x in train))
    assert not seen & held
    assert {c for c, _ in seen} == set(COLOURS) and {s for _, s in seen} == set(SHAPES)
    assert not any("purple triangle" in x.caption for x in train)
    tests = sd.test_prompts(cfg)
    assert len(tests) == len(held) * len(POSITIONS) * 2 + 40
    assert all(pairs_of(p) & held for p in tests)
    assert {(p.objects[0].colour, p.objects[0].shape, p.objects[0].position, p.objects[0].size)
            for p in tests if p.kind == "one"} == {(c, s, pos, z) for c, s in held for pos in POSITIONS
                                                   for z in ("small", "large")}
    assert [x.prompt for x in make_shapes(cfg, "test")] == tests


def test_captions_state_what_is_drawn():
    items = make_shapes(SMALL) + make_shapes(SMALL, "test")
    for it in items:
        assert parse_caption(it.caption) == it.prompt
        for o, (x, y), s in zip(it.prompt.objects, it.centres, it.sides):
            # the centre pixel of every shape is its colour, exactly
            assert tuple(it.image[int(y), int(x)]) == COLOURS[o.colour], (it.caption, x, y)
            assert s / 2 < x < 64 - s / 2 and s / 2 < y < 64 - s / 2  # wholly inside the image
        if it.prompt.kind == "one":
            o = it.prompt.objects[0]
            assert position_of(*it.centres[0]) == o.position
            assert SIDE[o.size][0] <= it.sides[0] <= SIDE[o.size][1]
        else:
            assert relation_of(*it.centres) == it.prompt.relation
            assert it.prompt.objects[0].colour != it.prompt.objects[1].colour
    # the background is white, never an object colour
    assert tuple(items[0].image[0, 0]) == sd.BACKGROUND and sd.BACKGROUND not in COLOURS.values()


def test_caption_text_and_parse_errors():
    one = ShapePrompt((ShapeSpec("circle", "red", "top left", "small"),))
    assert one.text == "a small red circle in the top left"
    two = ShapePrompt((ShapeSpec("square", "orange"), ShapeSpec("star", "yellow")), "left of")
    assert two.text == "an orange square to the left of a yellow star"
    assert parse_caption("  A Small red circle  in the top left ") == one
    assert ShapePrompt.from_dict(json.loads(json.dumps(two.to_dict()))) == two
    for bad in ("a red circle", "a huge red circle in the top left", "a red circle near a blue star"):
        with pytest.raises(CaptionError, match="not a shapes caption"):
            parse_caption(bad)


def test_extra_colours_draw_and_parse_but_stay_out_of_the_default_splits():
    assert list(PALETTE)[:len(COLOURS)] == list(COLOURS) and set(EXTRA_COLOURS).isdisjoint(COLOURS)
    hues = hue_degrees(np.array(list(PALETTE.values()), dtype=np.float64) / 255.0)
    gaps = np.abs(hues[:, None] - hues[None, :]) % 360
    gaps = np.minimum(gaps, 360 - gaps) + 360 * np.eye(len(hues))
    assert gaps.min() >= 28  # the probe's nearest-hue rule needs every pair of hues this far apart
    cyan = ShapePrompt((ShapeSpec("star", "cyan", "centre", "large"),))
    assert parse_caption("a large cyan star in the centre") == cyan
    assert tuple(render([("square", "cyan", 32, 32, 20)])[32, 32]) == EXTRA_COLOURS["cyan"]
    items = make_shapes(SMALL) + make_shapes(SMALL, "test")
    assert not {o.colour for it in items for o in it.prompt.objects} & set(EXTRA_COLOURS)
    with pytest.raises(ConfigError, match="colours.*cyan"):  # a default split never draws them
        make_shapes(ShapesConfig(colours=["red", "cyan"]))


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="colours.*teal"):
        make_shapes(ShapesConfig(colours=["red", "teal"]))
    with pytest.raises(ConfigError, match="held_out"):
        make_shapes(ShapesConfig(held_out=[["red", "hexagon"]]))
    with pytest.raises(ValueError, match="split"):
        make_shapes(SMALL, "val")


def test_written_folder_is_a_media_folder(tmp_path, capsys):
    folder = tmp_path / "shapes"
    assert sd.main(["--out", str(folder), "--split", "train", "--n-one", "6", "--n-two", "3", "--seed", "3"]) == 0
    assert "wrote 9 train images" in capsys.readouterr().out
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    items = make_shapes(ShapesConfig(n_one=6, n_two=3, seed=3))
    assert [r["file_name"] for r in rows] == [f"one_{i:05d}.png" for i in range(6)] + [f"two_{i:05d}.png" for i in range(3)]
    for r, it in zip(rows, items):
        assert r["text"] == it.caption and ShapePrompt.from_dict(r) == it.prompt
        assert np.array_equal(np.asarray(Image.open(folder / r["file_name"]).convert("RGB")), it.image)
    ds = MediaFolderDataset(MediaFolderConfig(path=str(folder), size=64))
    assert len(ds) == 9 and {ds[i]["text"] for i in range(9)} == {it.caption for it in items}
    sd.write_shapes_folder(folder, ShapesConfig(n_one=2, n_two=0, n_test_two=1), "test")  # replaces, not merges
    assert len((folder / "metadata.jsonl").read_text().splitlines()) == len(sd.test_prompts(ShapesConfig(n_test_two=1)))
    assert not (folder / "two_00002.png").exists()
