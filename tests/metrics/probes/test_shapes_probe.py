"""Tests for mmflow/metrics/probes/shapes.py: the shapes probe is exact on real generated images, and
wrong exactly where an image differs from its prompt (colour, position, size, shape, relation)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import mmflow.data.shapes as sd
from mmflow.data.shapes import COLOURS, POSITIONS, SHAPES, ShapeItem, ShapesConfig, make_shapes
from mmflow.metrics.features import get_features
from mmflow.metrics.probes import ProbeInputError, ShapesProbe, load_probe, score_shapes
from mmflow.metrics.probes.shapes import find_objects, train_shapes_probe

CFG = ShapesConfig(n_one=24, n_two=24, n_test_two=24, seed=5)
ONE_KEYS = ("colour", "position", "shape", "size", "all", "count")
TWO_KEYS = ("both_objects", "relation", "two_all")


@pytest.fixture(scope="module")
def probe() -> ShapesProbe:
    return load_probe(name="shapes")


def as_tensor(items: list[ShapeItem] | list[np.ndarray]) -> torch.Tensor:
    """Images (H, W, 3) uint8 -> (B, 3, H, W) in [-1, 1]."""
    arr = np.stack([it.image if isinstance(it, ShapeItem) else it for it in items])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def redraw(item: ShapeItem, change) -> np.ndarray:
    """The item drawn again with change(index, (shape, colour, x, y, side)) applied to each object."""
    objs = [(o.shape, o.colour, x, y, s) for o, (x, y), s in zip(item.prompt.objects, item.centres, item.sides)]
    return sd.render([change(k, obj) for k, obj in enumerate(objs)])


def other(names, name, step=1):
    """The name `step` places after `name` in `names` (cyclic): a wrong value of the same kind."""
    return names[(list(names).index(name) + step) % len(names)]


def test_exact_on_generated_test_and_train_images(probe):
    test, train = make_shapes(CFG, "test")[::4], make_shapes(CFG)  # 32 + 6 test images (both kinds), 48 train
    for items in (test, train):
        s = score_shapes(as_tensor(items), [it.prompt for it in items], probe)
        assert s["n_one"] > 5 and s["n_two"] > 5
        for key in ONE_KEYS + TWO_KEYS:
            assert s[key] >= 0.99, (key, s[key])
    # what the shipped probe says of itself (measured on the full default test split)
    assert probe.config.held_out_items == 126
    assert min(probe.config.held_out_accuracy.values()) >= 0.99 and probe.config.extra_metrics["two_all"] >= 0.99


def test_prompts_as_captions_prompts_or_metadata_dicts(probe):
    items = make_shapes(CFG, "test")[::10]
    x = as_tensor(items)
    by_text = score_shapes(x, [it.caption for it in items], probe)
    by_dict = score_shapes(x, [json.loads(json.dumps(it.prompt.to_dict())) for it in items], probe)
    assert by_text["items"] == by_dict["items"] and by_text["all"] == 1.0
    one = next(it for it in by_text["items"] if it["kind"] == "one")
    assert set(one["pred"]) >= {"shape", "colour", "position", "size", "centroid"} and one["found"] == 1


def test_fails_where_the_image_differs_from_the_prompt(probe):
    ones = [it for it in make_shapes(CFG) if it.prompt.kind == "one"]
    prompts = [it.prompt for it in ones]

    recoloured = [redraw(it, lambda k, o: (o[0], other(list(COLOURS), o[1], 3), *o[2:])) for it in ones]
    s = score_shapes(as_tensor(recoloured), prompts, probe)
    assert s["colour"] == 0.0 and s["all"] == 0.0 and s["shape"] == 1.0 and s["position"] == 1.0

    def move(k, o):  # to the centre of the next row's cell in the same column, wholly inside the image
        row = POSITIONS.index(sd.position_of(o[2], o[3])) // 3
        return (o[0], o[1], o[2], float(np.clip(((row + 1) % 3 + 0.5) * 64 / 3, o[4] / 2 + 1, 63 - o[4] / 2)), o[4])

    s = score_shapes(as_tensor([redraw(it, move) for it in ones]), prompts, probe)
    assert s["position"] == 0.0 and s["colour"] == 1.0 and s["shape"] == 1.0

    s = score_shapes(as_tensor([redraw(it, lambda k, o: (*o[:4], 32 - o[4])) for it in ones]), prompts, probe)
    assert s["size"] == 0.0 and s["colour"] == 1.0  # small (11-13 px) <-> large (19-21 px)

    s = score_shapes(as_tensor([redraw(it, lambda k, o: (other(SHAPES, o[0]), *o[1:])) for it in ones]), prompts, probe)
    assert s["shape"] <= 0.05 and s["colour"] == 1.0

    blank = np.full((64, 64, 3), 255, np.uint8)
    s = score_shapes(as_tensor([blank]), prompts[:1], probe)
    assert s["all"] == 0.0 and s["count"] == 0.0 and s["items"][0]["found"] == 0


def test_two_objects_swapped_places_or_colours_fail(probe):
    twos = [it for it in make_shapes(CFG) if it.prompt.kind == "two"]
    prompts = [it.prompt for it in twos]
    swapped = [redraw(it, lambda k, o, it=it: (*o[:2], *it.centres[1 - k], o[4])) for it in twos]
    s = score_shapes(as_tensor(swapped), prompts, probe)
    assert s["relation"] == 0.0 and s["both_objects"] == 1.0 and s["two_all"] == 0.0
    colours = [redraw(it, lambda k, o, it=it: (o[0], it.prompt.objects[1 - k].colour, *o[2:])) for it in twos]
    s = score_shapes(as_tensor(colours), prompts, probe)
    assert s["two_all"] == 0.0
    one_missing = [sd.render([(o.shape, o.colour, *it.centres[0], it.sides[0])])
                   for it, o in zip(twos, (it.prompt.objects[0] for it in twos))]
    s = score_shapes(as_tensor(one_missing), prompts, probe)
    assert s["both_objects"] == 0.0 and math.isnan(s["count"])  # no one-object prompts


def test_the_relation_is_read_between_the_asked_colours_even_when_the_shapes_are_wrong(probe):
    twos = [it for it in make_shapes(CFG) if it.prompt.kind == "two"]
    prompts = [it.prompt for it in twos]
    wrong_shapes = [redraw(it, lambda k, o: (other(SHAPES, o[0]), *o[1:])) for it in twos]
    s = score_shapes(as_tensor(wrong_shapes), prompts, probe)
    assert s["relation"] == 1.0 and s["both_objects"] <= 0.05


def test_reads_a_concept_set_colour_and_tells_it_from_its_neighbours(probe):
    from mmflow.data.shapes_concept import ConceptConfig, make_concept

    items = [it for _, it in make_concept(ConceptConfig(n_concept=100), "test")]  # 8 cyan, one per combination
    prompts = [it.prompt for it in items]
    s = score_shapes(as_tensor(items), prompts, probe)
    assert s["n_one"] == 8 and all(s[k] == 1.0 for k in ONE_KEYS), s
    for neighbour in ("blue", "green"):  # the hues either side of cyan's: wrong for a cyan prompt, and back
        recoloured = [redraw(it, lambda k, o: (o[0], neighbour, *o[2:])) for it in items]
        s = score_shapes(as_tensor(recoloured), prompts, probe)
        assert s["colour"] == 0.0 and s["shape"] == 1.0 and {it["pred"]["colour"] for it in s["items"]} == {neighbour}
        asked = [dataclasses.replace(p, objects=(dataclasses.replace(p.objects[0], colour=neighbour),))
                 for p in prompts]
        assert score_shapes(as_tensor(items), asked, probe)["colour"] == 0.0  # a model painting cyan is caught


def test_touching_objects_are_split_by_colour():
    img = sd.render([("square", "red", 24, 32, 16), ("circle", "blue", 38, 32, 16)])  # overlapping
    found = find_objects(as_tensor([img])[0], expect=2)
    assert len(find_objects(as_tensor([img])[0], expect=1)) == 1
    assert sorted(o.colour for o in found) == ["blue", "red"]
    red, blue = sorted(found, key=lambda o: o.colour != "red")
    assert sd.relation_of(red.centroid, blue.centroid) == "left of"


def test_input_errors_and_probe_interface(probe):
    with pytest.raises(ProbeInputError, match=r"\(B, 3, 64, 64\)"):
        score_shapes(torch.zeros(2, 3, 32, 32), ["a small red circle in the top left"] * 2, probe)
    with pytest.raises(ProbeInputError, match="2 images but 1 prompts"):
        score_shapes(torch.zeros(2, 3, 64, 64), ["a small red circle in the top left"], probe)
    items = [it for it in make_shapes(CFG, "test") if it.prompt.kind == "one"][:8]
    labels = {a: [getattr(it.prompt.objects[0], a) for it in items] for a in ("shape", "colour", "position", "size")}
    assert probe.accuracy(as_tensor(items), labels) == {a: 1.0 for a in labels}
    feats = get_features("probe:shapes")
    v = feats(as_tensor(items))
    assert v.shape == (8, 64) and torch.isfinite(v).all()
    torch.testing.assert_close(v, probe.features(as_tensor(items)))
    folder = Path(__file__).resolve().parents[3] / "checkpoints" / "probes" / "shapes"
    assert sum(f.stat().st_size for f in folder.iterdir()) < 2**20
    assert "train_shapes" in probe.config.command


def test_training_learns_shapes_from_a_small_set(tmp_path):
    cfg = ShapesConfig(n_one=60, n_two=20, n_test_two=4, seed=1)
    probe, score = train_shapes_probe(tmp_path / "p", cfg, epochs=6, seed=0, command="test")
    assert score["shape"] >= 0.8 and score["colour"] == 1.0  # chance: 1/6
    again = load_probe(tmp_path / "p")
    assert again.config.held_out_accuracy == probe.config.held_out_accuracy
    assert dataclasses.asdict(again.config)["extra_metrics"]["two_items"] == 4.0
