"""recipes/shapes_t2v_lora_concept.yaml shortened, through the CLI: a LoRA adapter on the shipped shapes_t2v for
the up-right concept set (two steps, batch 4, a validation with the shapes video probe on held-out up-right
prompts), saved as the adapter only, then sampled from the base with --lora into an MP4. Only step counts and
data are shrunk: the model is the shipped one, as the recipe's train.init_from names it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmflow.cli import main
from mmflow.data.shapes_video_concept import VideoConceptConfig, write_video_concept_folder
from tests.conftest import REPO
from tests.recipes.shortened import train_concept_adapter

RECIPE = REPO / "recipes" / "shapes_t2v_lora_concept.yaml"
BASE = REPO / "checkpoints" / "shapes_t2v"


def test_video_concept_recipe_trains_an_adapter_only_and_samples_with_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = VideoConceptConfig(n_concept=4, n_test=4, n_prior=2)
    data = write_video_concept_folder(tmp_path / "train", cfg)
    test = write_video_concept_folder(tmp_path / "test", cfg, "test")
    run = tmp_path / "run"
    monkeypatch.chdir(REPO)  # the recipe names the shipped model and tokenizer from the repository root
    train_concept_adapter(RECIPE, BASE, data, test, run, "shapes_video", "motion", capsys)

    samples = tmp_path / "samples"
    prompt = "a red star moving up and to the right on a black background"
    assert main(["sample", str(BASE), "--lora", f"{run}:0.8", "--prompt", prompt, "--out", str(samples),
                 "num_samples=1", "steps=2"]) == 0
    index = json.loads((samples / "samples.json").read_text())
    assert len(index["samples"]) == 1 and prompt in json.dumps(index)
    assert list(samples.glob("*.mp4"))
