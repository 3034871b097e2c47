"""A saved flow model, ready to sample: run folder / checkpoint / export folder -> FlowPipeline.

A folder with `pipeline.json` (written beside the exported models at every checkpoint) holds the
recipe that trained it, so sampling needs nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from mmflow.config import apply_overrides, from_dict, to_dict
from mmflow.models.registry import load_model
from mmflow.recipe import Recipe, SampleConfig, recipe_from_dict
from mmflow.train.checkpoint import list_checkpoints, verify_checkpoint

PIPELINE_FILE = "pipeline.json"


def resolve_model_folder(path: str | Path) -> Path:
    """A folder holding pipeline.json: the path itself, a run's `model/` export, or its newest good checkpoint."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (pass a run folder, a checkpoint folder or an exported model)")
    if (path / PIPELINE_FILE).exists():
        return path
    if (path / "model" / PIPELINE_FILE).exists():
        return path / "model"
    for ref in list_checkpoints(path / "checkpoints"):
        if verify_checkpoint(ref.path, hashes=False) is None:
            return ref.path
    raise FileNotFoundError(f"{path}: no {PIPELINE_FILE}, no model/ export and no intact checkpoint found")


@dataclass
class FlowPipeline:
    recipe: Recipe
    task: Any  # a FlowMatchingTask
    model: nn.Module
    source: Path

    @classmethod
    def from_pretrained(cls, path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu") -> "FlowPipeline":
        folder = resolve_model_folder(path)
        info = json.loads((folder / PIPELINE_FILE).read_text())
        recipe = recipe_from_dict(info["recipe"], source=str(folder / PIPELINE_FILE))
        from mmflow.tasks import get_task_class

        task = get_task_class(info["task"])(recipe)
        name = info.get("model", "velocity")
        model_dir = folder / "models" / (f"{name}_ema" if use_ema and (folder / "models" / f"{name}_ema").exists() else name)
        model = load_model(model_dir, map_location=device).eval()
        return cls(recipe, task, model, model_dir)

    def sample_config(self, overrides: Sequence[str] = ()) -> SampleConfig:
        """The recipe's sampling defaults with `sample.key=value` (or `key=value`) overrides applied."""
        keys = [o if o.startswith("sample.") else f"sample.{o}" for o in overrides]
        data = apply_overrides({"sample": to_dict(self.recipe.sample)}, keys)
        return from_dict(SampleConfig, data["sample"], source="command line", prefix="sample")
