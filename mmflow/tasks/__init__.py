"""Task registry: the recipe's `task:` key picks one. A task defines the data/model schema."""

from __future__ import annotations

from mmflow.config import ConfigError
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


def _load_builtin() -> None:
    import mmflow.tasks.digits  # noqa: F401  (registers itself)
    import mmflow.tasks.tokenizer  # noqa: F401  (registers itself)
    import mmflow.tasks.text_to_media  # noqa: F401  (registers itself)
    import mmflow.tasks.toy2d  # noqa: F401  (registers itself)
