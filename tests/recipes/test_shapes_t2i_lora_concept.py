"""recipes/shapes_t2i_lora_concept.yaml shortened, through the CLI: a LoRA adapter on the shipped shapes_t2i
for the cyan concept set (two steps, batch 4, a validation with the shapes probe on the held-out cyan prompts),
saved as the adapter only, then sampled from the base with --lora. Only step counts and data are shrunk:
the model is the shipped one, as the recipe's train.init_from names it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmflow.cli import main
from mmflow.data.shapes_concept import ConceptConfig, write_concept_folder
from tests.conftest import REPO
from tests.recipes.shortened import train_concept_adapter

RECIPE = REPO / "recipes" / "shapes_t2i_lora_concept.yaml"
BASE = REPO / "checkpoints" / "shapes_t2i"


def test_concept_recipe_trains_an_adapter_only_and_samples_with_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = ConceptConfig(n_concept=4, n_prior_one=2, n_prior_two=2)
    data, test = write_concept_folder(tmp_path / "train", cfg), write_concept_folder(tmp_path / "test", cfg, "test")
    run = tmp_path / "run"
    monkeypatch.chdir(REPO)  # the recipe names the shipped model and tokenizer from the repository root
    train_concept_adapter(RECIPE, BASE, data, test, run, "shapes", "colour", capsys)

    samples = tmp_path / "samples"
    prompt = "a large cyan star in the centre"
    assert main(["sample", str(BASE), "--lora", f"{run}:0.8", "--prompt", prompt, "--out", str(samples),
                 "num_samples=1", "steps=2"]) == 0
    index = json.loads((samples / "samples.json").read_text())
    assert len(index["samples"]) == 1
    with Image.open(samples / "sample_0000.png") as img:
        assert img.size == (64, 64) and prompt in json.dumps(dict(img.text))
        assert np.asarray(img).std() > 0
