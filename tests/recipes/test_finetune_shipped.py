"""Fine-tuning from every shipped text-to-media model through the CLI: for each `checkpoints/<name>` that holds a
pipeline.json, its recipe (recipes/<name>.yaml, named in the pipeline) trains two steps from it on a few
generated items, full and with a LoRA adapter, as a user would start (`train.init_from=checkpoints/<name>`).
The network is the shipped one, not shrunk; only the data, batch and step counts are."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
from safetensors.torch import load_file

from mmflow.cli import main
from mmflow.data.shapes import ShapesConfig, write_shapes_folder
from mmflow.data.shapes_video import ShapesVideoConfig, write_clips_folder
from mmflow.data.tones import TonesConfig, write_tones_folder
from mmflow.models.lora import ADAPTER_WEIGHTS
from tests.conftest import REPO

CHECKPOINTS = REPO / "checkpoints"
SHIPPED = sorted(p.parent.name for p in CHECKPOINTS.glob("*/pipeline.json"))

# recipe name -> writes a small (train, test) pair of folders of that recipe's data
DATA: dict[str, Callable[[Path], None]] = {
    "shapes_t2i": lambda root: (write_shapes_folder(root / "train", ShapesConfig(n_one=6, n_two=2), split="train"),
                                write_shapes_folder(root / "test", ShapesConfig(n_test_two=2), split="test")),
    "shapes_t2v": lambda root: (write_clips_folder(root / "train", ShapesVideoConfig(n=4), split="train"),
                                write_clips_folder(root / "test", ShapesVideoConfig(), split="test")),
    "tones_t2m": lambda root: (write_tones_folder(root / "train", TonesConfig(n_train=4), split="train"),
                               write_tones_folder(root / "test", TonesConfig(test_tempi_per_key=1), split="test")),
}
DATA["reflow_shapes_t2i"] = DATA["meanflow_shapes_t2i"] = DATA["shapes_t2i"]
# recipe name -> overrides that shrink what it makes before training (a reflow student's pairs: a few, short)
EXTRA: dict[str, list[str]] = {
    "reflow_shapes_t2i": ["flow.reflow.pairs=4", "flow.reflow.batch_size=4", "flow.reflow.sample.steps=2"],
}

# shipped model -> overrides it needs because its recipe has moved on since it was made
EARLIER: dict[str, list[str]] = {}

def _recipe_name(name: str) -> str:
    return json.loads((CHECKPOINTS / name / "pipeline.json").read_text())["recipe"]["name"]


def test_every_shipped_model_is_covered() -> None:
    assert SHIPPED, "no shipped text-to-media model found under checkpoints/"
    for name in SHIPPED:
        recipe = _recipe_name(name)
        assert (REPO / "recipes" / f"{recipe}.yaml").is_file(), f"{name}: its recipe {recipe}.yaml is missing"
        assert recipe in DATA, f"{name}: add a data maker for recipe {recipe} to this test"


@pytest.mark.parametrize("name", SHIPPED)
def test_fine_tune_from_shipped_model_full_and_lora(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = _recipe_name(name)
    DATA[recipe](tmp_path)
    monkeypatch.chdir(REPO)  # recipes name the shipped tokenizers from the repository root
    common = [f"train.init_from=checkpoints/{name}", f"data.path={tmp_path / 'train'}",
              f"data.cache={tmp_path / 'cache'}", f"eval.real={tmp_path / 'test'}", "train.batch_size=2",
              "train.max_steps=2", "train.warmup_steps=0", "train.checkpoint_every=2", "train.validate_every=0",
              "train.log_every=1", "data.eval_per_prompt=1", "eval.num_samples=2", "eval.batch_size=2",
              "sample.steps=2", *EXTRA.get(recipe, []), *EARLIER.get(name, [])]
    base = load_file(str(CHECKPOINTS / name / "models" / "velocity" / "model.safetensors"))

    full = tmp_path / "full"
    assert main(["train", str(REPO / "recipes" / f"{recipe}.yaml"), "--run-dir", str(full), *common]) == 0, \
        capsys.readouterr()
    trained = load_file(str(full / "checkpoints" / "step_00000002" / "model.safetensors"))
    assert set(trained) == set(base)  # the shipped network, not a shrunk one
    moved = [k for k in base if (trained[k].float() - base[k].float()).abs().max() > 1e-4]
    assert len(moved) > len(base) // 2, f"only {len(moved)} of {len(base)} tensors changed"

    lora = tmp_path / "lora"
    assert main(["train", str(REPO / "recipes" / f"{recipe}.yaml"), "--run-dir", str(lora), *common,
                 "train.lora.rank=2"]) == 0, capsys.readouterr()
    adapter = lora / "model" / "models" / "velocity" / ADAPTER_WEIGHTS
    assert adapter.is_file() and not (adapter.parent / "model.safetensors").exists()
    assert all("lora_" in k for k in load_file(str(adapter)))
