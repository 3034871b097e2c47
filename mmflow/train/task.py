"""The contract between the trainer and what it trains.

A task owns its models, says which optimizer trains which models, builds its dataset and computes a
loss for one micro-batch. The trainer owns everything distributed: devices, DDP wrapping, mixed
precision, accumulation, clipping, EMA, checkpoints and logging. A GAN-style task (a VAE with a
discriminator) simply declares two optimizer groups; the trainer steps them in turn.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, default_collate

from mmflow.config import ConfigError
from mmflow.train.random import BatchRandom


@dataclass
class LossOutput:
    """loss: scalar to minimise; logs: extra scalars; per_example (B,) and t (B,) feed the t-bin stats;
    extras: tensors for the next optimizer group's loss on the same micro-batch (see `Task.loss`)."""

    loss: Tensor
    logs: dict[str, float] = field(default_factory=dict)
    per_example: Tensor | None = None
    t: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class CounterReport:
    """metrics: written into the run's final metrics; text: a paragraph the trainer logs (None: nothing)."""

    metrics: dict[str, float] = field(default_factory=dict)
    text: str | None = None


def format_metric(value: float | None, spec: str) -> str:
    """A metric for the end-of-run summary: format(value, spec), or "n/a" for a value not known (null in JSON)."""
    return "n/a" if value is None else format(value, spec)


class Task(ABC):
    """Subclasses set `name`, `data_config_class`, `model_config_class` and register in mmflow.tasks."""

    name: ClassVar[str]
    data_config_class: ClassVar[type]
    model_config_class: ClassVar[type]

    def __init__(self, recipe: Any) -> None:
        self.recipe = recipe

    @abstractmethod
    def build_models(self) -> dict[str, nn.Module]:
        """Fresh models by name, on CPU; the trainer moves and wraps them."""

    def optimizer_groups(self, models: dict[str, nn.Module]) -> dict[str, list[str]]:
        """Optimizer name -> names of the models it updates; groups are stepped in this order."""
        return {"main": list(models)}

    def optimizer_active(self, optimizer: str, step: int) -> bool:
        """Whether group `optimizer` steps at `step` (e.g. a discriminator switched on after N steps)."""
        return True

    def ema_models(self, models: dict[str, nn.Module]) -> list[str]:
        """Models that get an EMA copy (used for validation and export)."""
        return self.optimizer_groups(models)[next(iter(self.optimizer_groups(models)))]

    def compiled_model(self) -> str | None:
        """The model train.compile applies to (the one whose forward dominates a step), or None: none."""
        return None

    def jvp_training(self) -> str | None:
        """Why the loss differentiates a model forward-mode (torch.func.jvp), which sharding is not tested with;
        None when it does not."""
        return None

    def frozen_models(self) -> dict[str, nn.Module]:
        """Modules the task computes with but never trains (a tokenizer, text encoders), by name, in eval
        mode. May load them (lazily built parts). The trainer places them once after building, with
        `place_frozen_models`; they keep their dtype (autocast covers mixed precision)."""
        return {}

    def place_frozen_models(self, device: torch.device) -> None:
        """Move every module of `frozen_models` to `device` (the trainer, `mmflow prepare`, sampling)."""
        for module in self.frozen_models().values():
            module.to(device)

    def prepare_data(self, device: torch.device) -> None:
        """Make data the run needs that does not exist yet (DreamBooth's class items, mmflow/tasks/prior.py), on
        `device`. The trainer and `mmflow prepare` call it on the main process before anything is built, the
        other processes waiting; it is called on every start, so it must do nothing when the data are there.
        Default: nothing."""

    @abstractmethod
    def build_dataset(self) -> Dataset:
        """A map-style dataset; items are collated with `collate`."""

    def collate(self, items: list[Any]) -> Any:
        return default_collate(items)

    def batch_sampler(self, dataset: Dataset, local_batch: int, rank: int, world_size: int, seed: int,
                      start: int) -> Iterable[list[Any]] | None:
        """An endless sampler of this rank's micro-batches from micro-batch `start` on (resume), or None for
        the trainer's default (StreamBatchSampler). Media tasks return their dataset's bucketed sampler."""
        return None

    # ------------------------------------------------------------------ run counters
    def observe_batch(self, batch: Any) -> None:
        """Called with every collated micro-batch on its own rank, before it moves to the device: count what
        the batch reports (e.g. bad media items, see MediaAccounting); raise a UserError to stop the run."""

    def counters(self) -> dict[str, float]:
        """This rank's counts so far by name; the trainer sums them over ranks with one all-reduce at the end
        of the run and hands the totals to `report`. Every rank must return the same names in the same order."""
        return {}

    def counters_state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the counts (the main process's; the other ranks restart from zero)."""
        return {}

    def load_counters_state(self, state: dict[str, Any]) -> None:
        """Restore `counters_state` (main process, on resume)."""

    def report(self, totals: dict[str, float]) -> CounterReport:
        """The final metrics and the end-of-run paragraph from `counters` summed over ranks (every rank calls
        it; the main process logs the text). Default: the totals as metrics, no text."""
        return CounterReport(dict(totals))

    def summary_lines(self, metrics: dict[str, float | None], run_dir: Path) -> list[str]:
        """What `mmflow train` prints about the run's final `metrics` (None: a value not known), between its
        "run folder ... final loss" and "pictures" lines; `run_dir` for lines that point at its files.
        Default: nothing. A subclass that adds lines to a mixin's calls super() and extends them."""
        return []

    @abstractmethod
    def loss(self, models: dict[str, nn.Module], batch: Any, rng: BatchRandom, optimizer: str, step: int) -> LossOutput:
        """Loss of one micro-batch for optimizer group `optimizer`. Draw all randomness from `rng`.

        `models` are as the trainer holds them (DDP-wrapped when distributed): call a trained model, never
        unwrap it, so its gradients are all-reduced. A group that returns `extras` hands them on: the trainer
        calls the next group stepped this step, on the same micro-batch, with them as keyword `carry` (a
        task that returns none is never passed one). A GAN's generator hands its reconstruction on this way.
        """

    def validate(self, models: dict[str, nn.Module], out_dir: Path, step: int, device: torch.device) -> dict[str, float]:
        """Sample and measure with `models` (EMA weights where kept, eval mode); write files to out_dir."""
        return {}

    def start_models(self, models: dict[str, nn.Module], device: torch.device) -> None:
        """Called on every process before the first step of a run that does not continue its own checkpoint,
        after train.init_from: set what a model measures from data before it trains (an MM-DiT's text
        whitening). Every process must reach the same values from the same data. Default: nothing."""

    def finish_models(self, models: dict[str, nn.Module], dataset: Dataset, device: torch.device) -> None:
        """Called once on the main process after the last step, before the final checkpoint and export:
        change exported models in place (a tokenizer stores its measured latent statistics here)."""

    def pipeline_info(self) -> dict[str, Any]:
        """What a sampler needs beside the model weights (written as pipeline.json).

        "model" names the model to sample with; "extra_models" (optional) lists other saved models it
        needs (e.g. a text embedder), which FlowPipeline loads and hands to `attach_models`. The trainer
        adds the resolved recipe as "recipe".
        """
        return {"task": self.name}

    def export_frozen(self, models_dir: Path) -> dict[str, Any]:
        """Copy the frozen components a sampler needs (a tokenizer, text encoders) into `models_dir`, an
        exported folder's models/ (main process, after the trained models are saved), so the folder samples
        where it is copied. Returns their record, which the trainer stores in pipeline.json as "components"
        (paths relative to models_dir's parent); {} (the default): nothing frozen to export."""
        return {}

    @classmethod
    def resolve_exported(cls, recipe: dict, components: dict, folder: Path,
                         text_encoders: Mapping[str, str] | None = None) -> dict:
        """A copy of an exported recipe dict whose frozen-component paths point at the copies bundled in
        `folder` (the exported folder, holding pipeline.json) or at referenced ones; `text_encoders` gives a
        referenced text encoder a new path by key. Default: the recipe unchanged, no text encoder taken."""
        if text_encoders:
            raise ConfigError(f"this model references no text encoder ({cls.name}), so {sorted(text_encoders)} "
                              "cannot be given a path", "text_encoders")
        return copy.deepcopy(recipe)

    def attach_models(self, models: dict[str, nn.Module]) -> None:
        """Sampling: receive the loaded "extra_models" of pipeline_info (eval mode, EMA where saved)."""
        if models:
            raise ValueError(f"task {self.name} takes no extra models, got {sorted(models)}")

    @classmethod
    def upgrade_recipe_dict(cls, raw: dict[str, Any], source: str | None) -> dict[str, Any]:
        """The recipe mapping with keys an older version wrote moved to where they live now (logging a
        deprecation note), before it is typed: old run folders and pipeline.json still load. Default: as is."""
        return raw

    @classmethod
    def validate_recipe(cls, recipe: Any, source: str | None) -> None:
        """Cross-section checks of a typed recipe (raise ConfigError naming the key)."""
