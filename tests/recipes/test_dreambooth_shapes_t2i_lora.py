"""recipes/dreambooth_shapes_t2i_lora.yaml shortened, through the CLI: three subject images with the rare token, two
class images made by the shipped shapes_t2i from the class prompt (two sampling steps), two LoRA steps of batch 2
(one subject row, one class row). Only data, step counts and the number of class images are shrunk: the model is
the shipped one, as the recipe's train.init_from names it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmflow.cli import main
from mmflow.data.shapes import render
from mmflow.models.lora import ADAPTER_WEIGHTS
from tests.conftest import REPO

RECIPE = REPO / "recipes" / "dreambooth_shapes_t2i_lora.yaml"
SUBJECT = "a large sks star in the centre"


def _subject(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i, (x, y) in enumerate([(0, 0), (-3, 2), (3, -2)]):
        Image.fromarray(render([("star", "cyan", 32 + x, 32 + y, 30)], angles=[20])).save(folder / f"{i}.png")
    (folder / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"{i}.png", "text": SUBJECT}) + "\n"
                                                   for i in range(3)))
    return folder


def test_dreambooth_recipe_makes_class_images_and_trains_an_adapter(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    subject, classes, run = _subject(tmp_path / "subject"), tmp_path / "class", tmp_path / "run"
    monkeypatch.chdir(REPO)  # the recipe names the shipped model and tokenizer from the repository root
    overrides = [f"data.path={subject}", f"data.prior.path={classes}", "data.prior.num=2", "data.prior.sample.steps=2",
                 "train.batch_size=2", "train.max_steps=2", "train.warmup_steps=0", "train.checkpoint_every=2",
                 "train.validate_every=2", "train.log_every=1", "data.eval_per_prompt=1", "sample.steps=2"]
    assert main(["train", str(RECIPE), "--run-dir", str(run), *overrides]) == 0

    rows = [json.loads(line) for line in (classes / "metadata.jsonl").read_text().splitlines()]
    assert [r["file_name"] for r in rows] == ["class_00000.png", "class_00001.png"]
    assert {r["text"] for r in rows} == {"a large star in the centre"}
    for r in rows:
        with Image.open(classes / r["file_name"]) as img:
            assert img.size == (64, 64) and np.asarray(img).std() > 0
    assert "made 2 class items" in (run / "train.log").read_text()
    assert (run / "model" / "models" / "velocity" / ADAPTER_WEIGHTS).is_file()
