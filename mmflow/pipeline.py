"""A saved flow model, ready to sample: run folder / checkpoint / export folder -> FlowPipeline.

A folder with `pipeline.json` (written beside the exported models at every checkpoint) holds the
recipe that trained it, so sampling needs nothing else. Everything is verified before use: a
checkpoint against its MANIFEST (sha256 of every file), every JSON file parsed, every weight finite;
a run whose `model/` export is broken falls back to its newest intact checkpoint and says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

import mmflow.builtin_models  # noqa: F401  (pipeline.json's models may be of any built-in type)
from mmflow.config import ConfigError, apply_overrides, from_dict, to_dict
from mmflow.errors import MissingInput, UserError
from mmflow.model_io import CorruptModel, load_model, read_json_object
from mmflow.recipe import Recipe, SampleConfig
from mmflow.sampling.generate import NonFiniteSamples
from mmflow.tasks import get_task_class, recipe_from_dict
from mmflow.train.checkpoint import MANIFEST, list_checkpoints, verify_checkpoint

logger = logging.getLogger(__name__)
PIPELINE_FILE = "pipeline.json"
DEVICE_FORMS = "cpu, cuda, cuda:N or mps"


def parse_device(value: str | torch.device) -> torch.device:
    """`value` as a torch.device this machine has, or ConfigError naming it and the allowed forms."""
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError, TypeError) as e:  # torch's parse error lists every backend it knows
        raise ConfigError(f"{str(value)!r} is not a device; use {DEVICE_FORMS}", "--device") from e
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{str(value)!r}: this machine has no CUDA device; use cpu", "--device")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{str(value)!r}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}",
                              "--device")
        return device
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{str(value)!r}: MPS is not available on this machine; use cpu", "--device")
        return device
    raise ConfigError(f"{str(value)!r}: device type {device.type!r} is not supported; use {DEVICE_FORMS}", "--device")


def model_candidates(path: str | Path) -> tuple[list[Path], bool]:
    """(folders holding a saved pipeline, in the order to try them; whether `path` named one itself).

    A folder with pipeline.json is the only candidate (what the user named is used or refused, never
    swapped); a run folder offers its `model/` export, then its checkpoints newest first.
    """
    path = Path(path)
    if not path.exists():
        raise MissingInput(f"{path} does not exist (pass a run folder, a checkpoint folder or an exported model)")
    if (path / PIPELINE_FILE).exists():
        return [path], True
    found = [path / "model"] if (path / "model").is_dir() else []
    found += [ref.path for ref in list_checkpoints(path / "checkpoints")]
    return found, False


def _verified(folder: Path) -> Path:
    """`folder`, after checking a checkpoint's files against its MANIFEST (sizes and sha256)."""
    if (folder / MANIFEST).exists():
        reason = verify_checkpoint(folder, hashes=True)
        if reason is not None:
            raise CorruptModel(f"{folder}: checkpoint does not match its {MANIFEST}: {reason}")
    if not (folder / PIPELINE_FILE).is_file():
        raise CorruptModel(f"{folder}: no {PIPELINE_FILE} (the export is incomplete)")
    return folder


@dataclass
class FlowPipeline:
    recipe: Recipe
    task: Any  # a FlowMatchingTask
    model: nn.Module
    source: Path
    extra_models: dict[str, nn.Module] = field(default_factory=dict)  # e.g. a text embedder, see below

    @classmethod
    def from_pretrained(cls, path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu") -> "FlowPipeline":
        """Load a saved pipeline, verified (see the module docstring); a run folder whose `model/` export
        does not load falls back to its newest intact checkpoint with a warning naming what was wrong."""
        device = parse_device(device)
        candidates, explicit = model_candidates(path)
        if not candidates:
            raise MissingInput(f"{path}: no {PIPELINE_FILE}, no model/ export and no checkpoint found")
        tried: list[str] = []
        for folder in candidates:
            try:
                pipe = cls._load(_verified(folder), use_ema, device)
            except UserError as e:
                if explicit:
                    raise
                tried.append(str(e) if str(e).startswith(str(folder)) else f"{folder}: {e}")  # name the folder once
                continue
            if tried:
                logger.warning("skipped %s; sampling from %s instead", "; skipped ".join(tried), folder)
            return pipe
        raise CorruptModel(f"{path}: no usable model ({len(tried)} tried): " + "; ".join(tried))

    @classmethod
    def _load(cls, folder: Path, use_ema: bool, device: torch.device) -> "FlowPipeline":
        """Load the model pipeline.json names, and the "extra_models" it lists (handed to task.attach_models)."""
        info_path = folder / PIPELINE_FILE
        info = read_json_object(info_path)
        for key in ("task", "recipe"):
            if key not in info:
                raise CorruptModel(f"{info_path}: missing key {key!r}")
        recipe = recipe_from_dict(info["recipe"], source=str(info_path))
        task = get_task_class(info["task"], source=str(info_path))(recipe)

        def model_dir(name: str) -> Path:
            ema = folder / "models" / f"{name}_ema"
            return ema if use_ema and ema.exists() else folder / "models" / name

        main = model_dir(info.get("model", "velocity"))
        model = load_model(main, map_location=device).eval()
        extras = {n: load_model(model_dir(n), map_location=device).eval() for n in info.get("extra_models", [])}
        task.attach_models(extras)
        return cls(recipe, task, model, main, extras)

    def generate(self, num: int, device: torch.device, sample_cfg: SampleConfig, out_dir: Path,
                 label: int | None = None, prompts: Sequence[str] | None = None) -> dict[str, Any]:
        """The task's `generate` (which writes the samples into out_dir), refusing non-finite values.

        Every task samples through mmflow.sampling.generate, which checks each velocity and the result:
        a NaN or inf stops sampling before any file is written.
        """
        try:
            return self.task.generate(self.model, num, device, sample_cfg, out_dir, label=label, prompts=prompts)
        except NonFiniteSamples as e:  # name the model, and what to change
            raise NonFiniteSamples(f"sampling {self.source} gave {e}; nothing was written. The weights are finite: "
                                   "check the sample settings") from None

    def sample_config(self, overrides: Sequence[str] = ()) -> SampleConfig:
        """The recipe's sampling defaults with `sample.key=value` (or `key=value`) overrides applied."""
        keys = [o if o.startswith("sample.") else f"sample.{o}" for o in overrides]
        data = apply_overrides({"sample": to_dict(self.recipe.sample)}, keys)
        return from_dict(SampleConfig, data["sample"], source="command line", prefix="sample")
