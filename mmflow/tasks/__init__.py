"""Task registry: the recipe's `task:` key picks one. A task defines the data/model schema, so
recipes are loaded here: `load_recipe(path, overrides)` reads a YAML file into a typed `Recipe`
whose `data` and `model` are the task's config dataclasses.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from mmflow.config import ConfigError, build_with_overrides, from_dict
from mmflow.recipe import Recipe
from mmflow.train.task import Task

TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls
    return cls


def get_task_class(name: str, source: str | None = None) -> type[Task]:
    _load_builtin()
    if name not in TASKS:
        raise ConfigError(f"{name!r} is not one of {', '.join(repr(k) for k in sorted(TASKS))}", "task", source)
    return TASKS[name]


def recipe_from_dict(raw: dict[str, Any], source: str | None = None) -> Recipe:
    """Validate a recipe mapping into typed configs (the task decides the data/model schema)."""
    if not isinstance(raw, dict):
        raise ConfigError("the top level must be a mapping", None, source)
    task_name = raw.get("task")
    if task_name is None:
        raise ConfigError("required key is missing (the task decides the data and model schema)", "task", source)
    task_cls = get_task_class(task_name, source)
    raw = task_cls.upgrade_recipe_dict(raw, source)
    typed = dict(raw)
    typed["data"] = from_dict(task_cls.data_config_class, raw.get("data") or {}, source=source, prefix="data")
    typed["model"] = from_dict(task_cls.model_config_class, raw.get("model") or {}, source=source, prefix="model")
    recipe = from_dict(Recipe, typed, source=source)
    if recipe.flow.reflow is not None and not getattr(task_cls, "supports_reflow", False):
        raise ConfigError(f"the {task_name} task does not train on reflow pairs (toy2d and text_to_media do)",
                          "flow.reflow", source)
    task_cls.validate_recipe(recipe, source)
    return recipe


def load_recipe(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Recipe:
    """Read, override (dotted `key=value`) and validate a recipe file."""
    return build_with_overrides(recipe_from_dict, path, overrides)


def _load_builtin() -> None:
    import mmflow.tasks.digits  # noqa: F401  (registers itself)
    import mmflow.tasks.tokenizer  # noqa: F401  (registers itself)
    import mmflow.tasks.text_to_media  # noqa: F401  (registers itself)
    import mmflow.tasks.toy2d  # noqa: F401  (registers itself)
