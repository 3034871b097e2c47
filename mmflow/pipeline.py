"""A saved flow model, ready to sample: run folder / checkpoint / export folder -> FlowPipeline.

A folder with `pipeline.json` (written beside the exported models at every checkpoint) holds the
recipe that trained it, so sampling needs nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from mmflow.config import apply_overrides, from_dict, to_dict
from mmflow.errors import MissingInput
from mmflow.models.registry import load_model
from mmflow.recipe import Recipe, SampleConfig, recipe_from_dict
from mmflow.train.checkpoint import list_checkpoints, verify_checkpoint

PIPELINE_FILE = "pipeline.json"


def resolve_model_folder(path: str | Path) -> Path:
    """A folder holding pipeline.json: the path itself, a run's `model/` export, or its newest good checkpoint."""
    path = Path(path)
    if not path.exists():
        raise MissingInput(f"{path} does not exist (pass a run folder, a checkpoint folder or an exported model)")
    if (path / PIPELINE_FILE).exists():
        return path
    if (path / "model" / PIPELINE_FILE).exists():
        return path / "model"
    for ref in list_checkpoints(path / "checkpoints"):
        if verify_checkpoint(ref.path, hashes=False) is None:
            return ref.path
    raise MissingInput(f"{path}: no {PIPELINE_FILE}, no model/ export and no intact checkpoint found")


@dataclass
class FlowPipeline:
    recipe: Recipe
    task: Any  # a FlowMatchingTask
    model: nn.Module
    source: Path
    extra_models: dict[str, nn.Module] = field(default_factory=dict)  # e.g. a text embedder, see below

    @classmethod
    def from_pretrained(cls, path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu") -> "FlowPipeline":
        """Load the model pipeline.json names, and the "extra_models" it lists (handed to task.attach_models)."""
        folder = resolve_model_folder(path)
        info = json.loads((folder / PIPELINE_FILE).read_text())
        recipe = recipe_from_dict(info["recipe"], source=str(folder / PIPELINE_FILE))
        from mmflow.tasks import get_task_class

        task = get_task_class(info["task"])(recipe)

        def model_dir(name: str) -> Path:
            ema = folder / "models" / f"{name}_ema"
            return ema if use_ema and ema.exists() else folder / "models" / name

        main = model_dir(info.get("model", "velocity"))
        model = load_model(main, map_location=device).eval()
        extras = {n: load_model(model_dir(n), map_location=device).eval() for n in info.get("extra_models", [])}
        task.attach_models(extras)
        return cls(recipe, task, model, main, extras)

    def sample_config(self, overrides: Sequence[str] = ()) -> SampleConfig:
        """The recipe's sampling defaults with `sample.key=value` (or `key=value`) overrides applied."""
        keys = [o if o.startswith("sample.") else f"sample.{o}" for o in overrides]
        data = apply_overrides({"sample": to_dict(self.recipe.sample)}, keys)
        return from_dict(SampleConfig, data["sample"], source="command line", prefix="sample")
