"""The recipe: one YAML file that says what to train, on what, how, and how to sample.

Sections: name, task, seed, data, model, flow, train, sample, run_dir. `data` and `model` are typed
by the task, so loading a file lives beside the task registry (`mmflow.tasks.load_recipe`); this
module is the schema only, and knows no task. Loading validates the whole file before any work
starts: an unknown key, a wrong type or an impossible value is a ConfigError that names the key, the
file and the allowed values. `mmflow train` and `prepare` then call `check_before_work`: every
input path exists and the run folder is a folder of its own (not the working directory, a parent of
it, or inside an input folder), still before anything is written.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from mmflow.config import ConfigError, check, check_paths, input_paths, override_for
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
    guidance: float = field(default=1.0, metadata={
        "min": 0.0, "help": "CFG scale w: 0 = unconditional, 1 = plain conditional, > 1 = stronger guidance. "
                            "Negative w (steering away from the condition) is refused: it is only an experiment, "
                            "and usually a typo"})
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
    run_dir: str | None = field(default=None, metadata={
        "help": "default: runs/<name>; any folder but the working directory, a parent of it, or one inside an input"})

    def validate(self) -> None:
        check(_SAFE_NAME.fullmatch(self.name) is not None, "name",
              f"{self.name!r} is not a usable run name: it names the folder runs/<name>, so use letters, digits, "
              f"'.', '_' and '-', starting with a letter or digit (no path separators)")

    def resolved_run_dir(self) -> str:
        return self.run_dir or os.path.join("runs", self.name)


# One folder name: no separator, and a leading letter or digit rules out '.', '..' and hidden folders.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_before_work(recipe: Recipe, source: str, overrides: Sequence[str] = (), run_dir: str | None = None) -> Path:
    """The run folder, after the checks `mmflow train` / `prepare` make before writing anything.

    Every input path of the recipe must exist (config.check_paths), and the run folder (`run_dir`,
    the --run-dir flag, else the recipe's) must not be the working directory or a parent of it (a run
    writes checkpoints, logs and model/ into its folder), a file, or inside an input folder (whose
    reader would then see the run's outputs). Errors name `source` (the recipe file) and the key,
    and the override that set it, if one did.
    """
    try:
        check_paths(recipe, source=source)
        if run_dir is not None:
            return _checked_run_dir(Path(run_dir), recipe, None, "command line (--run-dir)")
        key = "run_dir" if recipe.run_dir else "name"
        return _checked_run_dir(Path(recipe.resolved_run_dir()), recipe, key, source)
    except ConfigError as exc:
        text = override_for(exc.key, overrides)
        if text is None:
            raise
        raise ConfigError(f"{exc.message}; set by the override {text!r}", exc.key, exc.source) from exc


def _checked_run_dir(run_dir: Path, recipe: Recipe, key: str | None, source: str | None) -> Path:
    where = run_dir.expanduser().resolve()
    cwd = Path.cwd().resolve()
    if where == cwd or where in cwd.parents:
        what = "the working directory" if where == cwd else f"a parent of the working directory {cwd}"
        raise ConfigError(f"the run folder {run_dir} is {what}; a run writes checkpoints, logs and model/ into "
                          f"its folder, so give it one of its own (e.g. runs/{recipe.name})", key, source)
    if where.exists() and not where.is_dir():
        raise ConfigError(f"the run folder {run_dir} is a file", key, source)
    for input_key, path, kind, _ in input_paths(recipe):
        folder = path.resolve()
        if kind != "file" and (where == folder or folder in where.parents):
            raise ConfigError(f"the run folder {run_dir} is inside {input_key} ({path}), which the run reads: "
                              f"its outputs would be read as input; choose a folder outside it", key, source)
    return run_dir
