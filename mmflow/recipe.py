"""The recipe: one YAML file that says what to train, on what, how, and how to sample.

Sections: name, task, seed, data, model, flow, train, sample, run_dir. `data` and `model` are typed
by the task (mmflow.tasks); everything else is shared. Loading validates the whole file before any
work starts: an unknown key, a wrong type or an impossible value is a ConfigError that names the key,
the file and the allowed values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

from mmflow.config import ConfigError, build_with_overrides, check, from_dict, to_dict
from mmflow.train.config import TrainConfig


@dataclass
class TimeSamplerConfig:
    """Training-time distribution of t (SD3's samplers; see mmflow.flow.time_samplers)."""

    name: Literal["uniform", "logit_normal", "mode", "cosmap"] = "uniform"
    m: float = field(default=0.0, metadata={"help": "logit_normal location (in SD3's sigma = 1 - t)"})
    s: float = field(default=1.0, metadata={"min": 0.0, "min_exclusive": True, "help": "logit_normal scale"})
    scale: float = field(default=1.29, metadata={"help": "mode sampler's scale"})

    def kwargs(self) -> dict[str, float]:
        return {"logit_normal": {"m": self.m, "s": self.s}, "mode": {"scale": self.scale}}.get(self.name, {})


@dataclass
class FlowConfig:
    schedule: Literal["condot", "cosine", "vp"] = "condot"
    time_sampler: TimeSamplerConfig = field(default_factory=TimeSamplerConfig)
    loss_weighting: Literal["none", "sigma_sqrt", "cosmap"] = "none"
    cfg_dropout: float = field(default=0.1, metadata={"min": 0.0, "max": 1.0, "help": "P(condition -> null) in training"})


@dataclass
class SampleConfig:
    solver: Literal["euler", "midpoint", "heun", "rk4", "sde"] = "heun"
    steps: int = field(default=8, metadata={"min": 1, "help": "solver steps (heun/midpoint use 2 evaluations each)"})
    grid: Literal["uniform", "shifted"] = "uniform"
    shift: float = field(default=1.0, metadata={"min": 0.0, "min_exclusive": True, "help": "SD3 shift for grid: shifted"})
    guidance: float = field(default=1.0, metadata={"help": "CFG scale w; 1 = plain conditional sampling"})
    noise_scale: float = field(default=1.0, metadata={"min": 0.0, "help": "sde only"})
    diffusion: Literal["beta", "constant"] = field(default="beta", metadata={"help": "sde only: g(t) shape"})
    num_samples: int = field(default=10000, metadata={"min": 1})
    seed: int = 0

    def validate(self) -> None:
        check(self.grid == "shifted" or self.shift == 1.0, "shift",
              f"{self.shift} only applies with grid: shifted (the uniform grid has no shift)")


@dataclass
class Recipe:
    name: str
    task: str
    data: Any
    model: Any
    seed: int = 0
    flow: FlowConfig = field(default_factory=FlowConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    run_dir: str | None = field(default=None, metadata={"help": "default: runs/<name>"})

    def validate(self) -> None:
        check(bool(self.name) and "/" not in self.name, "name", f"must be a non-empty name without '/', got {self.name!r}")

    def resolved_run_dir(self) -> str:
        return self.run_dir or os.path.join("runs", self.name)


def recipe_from_dict(raw: dict[str, Any], source: str | None = None) -> Recipe:
    """Validate a recipe mapping into typed configs (the task decides the data/model schema)."""
    from mmflow.tasks import get_task_class

    if not isinstance(raw, dict):
        raise ConfigError("the top level must be a mapping", None, source)
    task_name = raw.get("task")
    if task_name is None:
        raise ConfigError("required key is missing (the task decides the data and model schema)", "task", source)
    task_cls = get_task_class(task_name, source)
    typed = dict(raw)
    typed["data"] = from_dict(task_cls.data_config_class, raw.get("data") or {}, source=source, prefix="data")
    typed["model"] = from_dict(task_cls.model_config_class, raw.get("model") or {}, source=source, prefix="model")
    recipe = from_dict(Recipe, typed, source=source)
    task_cls.validate_recipe(recipe, source)
    return recipe


def load_recipe(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Recipe:
    """Read, override (dotted `key=value`) and validate a recipe file."""
    return build_with_overrides(recipe_from_dict, path, overrides)


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    return to_dict(recipe)
