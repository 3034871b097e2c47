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
from typing import Any, Sequence

from mmflow.config import ConfigError, check, check_paths, input_paths, override_for
from mmflow.evaluation.config import EvalConfig
from mmflow.flow.config import FlowConfig, TimeSamplerConfig
from mmflow.sampling.config import SampleConfig
from mmflow.train.config import TrainConfig

__all__ = ["EvalConfig", "FlowConfig", "Recipe", "SampleConfig", "TimeSamplerConfig", "TrainConfig", "check_before_work"]


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
    eval: EvalConfig = field(default_factory=EvalConfig)  # quality measured at each validation (media recipes)
    run_dir: str | None = field(default=None, metadata={
        "help": "default: runs/<name>; any folder but the working directory, a parent of it, or one inside an input"})

    def validate(self) -> None:
        check(_SAFE_NAME.fullmatch(self.name) is not None, "name",
              f"{self.name!r} is not a usable run name: it names the folder runs/<name>, so use letters, digits, "
              f"'.', '_' and '-', starting with a letter or digit (no path separators)")
        check(self.sample.solver != "meanflow" or self.flow.objective == "meanflow", "sample.solver",
              "meanflow jumps with the average velocity a model learns with flow.objective: meanflow; this recipe's "
              "objective is fm (use euler, heun, ...)")

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
