"""`train.lora`: a run that trains LoRA adapters on a base model (train.init_from) instead of its weights.

    train:
      init_from: runs/base            # the base: a run, checkpoint or exported model folder
      lora: {rank: 8, alpha: 8, dropout: 0.0, targets: [attention, mlp]}

The base weights load from init_from (on --resume too: checkpoints hold none of them) and stay frozen;
the optimizer and the EMA see the adapters only. Checkpoints (accelerate's model state) and the exported
models/<name> and models/<name>_ema hold only the adapter, as peft adapter folders whose config points at
the base, and pipeline.json names the base as "base_model": FlowPipeline loads the base, then the adapter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor, nn

from mmflow.config import ConfigError
from mmflow.model_io import CorruptModel
from mmflow.models.lora import LoraConfig, add_lora, load_adapter_state, save_adapter
from mmflow.train.init_from import source_folder

__all__ = ["BASE_FROM_CWD_KEY", "BASE_MODEL_KEY", "LoraTraining", "cast_frozen"]

BASE_MODEL_KEY = "base_model"  # pipeline.json: the folder a LoRA export's adapters apply to
# ... and that folder relative to where training ran, when it lay below it: a clone moved or copied elsewhere
# (another machine, CI) finds its base again when sampled from its own root
BASE_FROM_CWD_KEY = "base_model_from_cwd"
ACCELERATE_WEIGHTS = "model.safetensors"  # what accelerate's save_state names the first model's state


def cast_frozen(model: nn.Module, dtype: str) -> None:
    """Store the frozen weights of `model` (a LoRA run's base) in `dtype` (train.frozen_dtype, a torch dtype's
    name); the trainable adapters stay float32."""
    for p in model.parameters():
        if not p.requires_grad:
            p.data = p.data.to(getattr(torch, dtype))


class LoraTraining:
    """What a LoRA run does beside a full fine-tune: adapt the trained model, save and load adapters only."""

    def __init__(self, settings: LoraConfig, init_from: str) -> None:
        self.settings = settings
        self.base = source_folder(Path(init_from)).resolve()
        self.model_name = ""

    def pipeline_info(self) -> dict[str, str]:
        """pipeline.json's pointers at the base: its absolute path, and its path from the working directory."""
        info = {BASE_MODEL_KEY: str(self.base)}
        if self.base.is_relative_to(Path.cwd().resolve()):
            info[BASE_FROM_CWD_KEY] = str(self.base.relative_to(Path.cwd().resolve()))
        return info

    def attach(self, models: dict[str, nn.Module], trained: list[str]) -> None:
        """Freeze the one trained model (already loaded from the base) and add the adapter to it."""
        if len(trained) != 1:
            raise ConfigError(f"LoRA adapts one trained model; this task trains {trained}", "train.lora")
        self.model_name = trained[0]
        add_lora(models[self.model_name], self.settings)

    def save(self, model: nn.Module, folder: Path) -> None:
        """An exported model: the adapter of `model` (bare, not wrapped) as a peft folder pointing at the base."""
        save_adapter(model, folder, self.settings, self.base)

    def load(self, model: nn.Module, folder: Path) -> None:
        """The adapter of an exported model folder into `model` (an EMA shadow on resume)."""
        load_adapter_state(model, folder)

    @staticmethod
    def adapter_only(models: list[nn.Module], weights: list[dict[str, Tensor]], output_dir: str) -> None:
        """accelerate's save_state pre-hook: each model's state keeps only its trainable tensors (the adapters)."""
        for i, model in enumerate(models):
            trainable = {n for n, p in model.named_parameters() if p.requires_grad}
            weights[i] = {k: v for k, v in weights[i].items() if k in trainable}

    def load_state(self, accelerator: Any, model: nn.Module, path: Path) -> None:
        """accelerator.load_state of a LoRA checkpoint (it holds the adapters only, so not strictly), after
        checking its model state holds exactly the adapter tensors of `model` (as prepared, maybe wrapped)."""
        with safe_open(str(path / ACCELERATE_WEIGHTS), framework="pt") as f:
            saved = set(f.keys())
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        if saved != trainable:
            raise CorruptModel(f"{path / ACCELERATE_WEIGHTS}: not this run's adapters (missing "
                               f"{sorted(trainable - saved)[:4]}, unexpected {sorted(saved - trainable)[:4]}): "
                               f"was train.lora changed?")
        accelerator.load_state(str(path), strict=False)
