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
from tests.recipes.shortened import assert_adapter_only

RECIPE = REPO / "recipes" / "shapes_t2i_lora_concept.yaml"
BASE = REPO / "checkpoints" / "shapes_t2i"


def _overrides(data: Path, test: Path) -> list[str]:
    return [f"data.path={data}", f"data.cache={data.parent / 'cache'}", f"eval.real={test}", "train.batch_size=4",
            "train.max_steps=2", "train.warmup_steps=0", "train.checkpoint_every=2", "train.validate_every=2",
            "train.log_every=1", "data.eval_per_prompt=1", "eval.num_samples=4", "eval.batch_size=4", "sample.steps=2"]


def test_concept_recipe_trains_an_adapter_only_and_samples_with_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = ConceptConfig(n_concept=4, n_prior_one=2, n_prior_two=2)
    data, test = write_concept_folder(tmp_path / "train", cfg), write_concept_folder(tmp_path / "test", cfg, "test")
    run = tmp_path / "run"
    monkeypatch.chdir(REPO)  # the recipe names the shipped model and tokenizer from the repository root
    assert main(["train", str(RECIPE), "--run-dir", str(run), *_overrides(data, test)]) == 0
    out = capsys.readouterr().out
    assert "prompt check 'shapes': 4 samples" in out, out
    table = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.startswith("  ")}
    assert 0.0 <= float(table["colour"]) <= 1.0, out

    # adapter only: the export is a peft folder far smaller than the base, the checkpoint holds LoRA tensors only
    assert_adapter_only(run, BASE)

    samples = tmp_path / "samples"
    prompt = "a large cyan star in the centre"
    assert main(["sample", str(BASE), "--lora", f"{run}:0.8", "--prompt", prompt, "--out", str(samples),
                 "num_samples=1", "steps=2"]) == 0
    index = json.loads((samples / "samples.json").read_text())
    assert len(index["samples"]) == 1
    with Image.open(samples / "sample_0000.png") as img:
        assert img.size == (64, 64) and prompt in json.dumps(dict(img.text))
        assert np.asarray(img).std() > 0
