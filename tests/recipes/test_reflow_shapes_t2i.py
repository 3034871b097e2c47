"""recipes/reflow_shapes_t2i.yaml shortened, through the CLI: the shipped shapes_t2i makes a few pairs with a
short sampler, the student (the shipped weights) trains two steps on them with a validation by the shapes probe,
then samples in the recipe's 2 Euler steps. Only counts and data are shrunk: the model is the shipped one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmflow.cli import main
from mmflow.flow.reflow import read_pairs
from tests.conftest import REPO
from tests.recipes.shortened import shipped_shapes_finetune

RECIPE = REPO / "recipes" / "reflow_shapes_t2i.yaml"


def test_reflow_recipe_makes_pairs_with_the_shipped_model_and_trains_on_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    data, _, overrides = shipped_shapes_finetune(tmp_path)
    run = tmp_path / "run"
    monkeypatch.chdir(REPO)  # the recipe names the shipped model and tokenizer from the repository root
    overrides += ["flow.reflow.pairs=6", "flow.reflow.batch_size=4", "flow.reflow.sample.steps=2"]
    assert main(["train", str(RECIPE), "--run-dir", str(run), *overrides]) == 0
    assert "prompt check 'shapes': 4 samples" in capsys.readouterr().out
    x0, x1, inputs = read_pairs(run / "reflow_pairs")
    assert x0.shape == x1.shape == (6, 16, 16, 16)  # the f4 tokenizer's latents of 64x64 images
    rows = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]
    picked = [rows[i] for i in (0, 2, 4, 5, 7, 9)]  # spread over the folder, not its head
    assert inputs == [row["text"] for row in picked]
    assert {row["kind"] for row in picked} == {"one", "two"}  # the folder lists one-object items first
    assert torch.isfinite(x1).all() and x1.std() > 0.1
    samples = tmp_path / "samples"
    assert main(["sample", str(run), "--prompt", "a large blue square in the centre", "--out", str(samples),
                 "num_samples=2"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["nfe"] == 2, info  # 2 Euler steps at guidance 1: no CFG rows
