"""The small toy recipe and the Accelerate reset the tests share (conftest.py makes fixtures of them; a test
module that needs them outside a test, in a module-scoped fixture say, imports them from here)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]

# A toy run that trains in seconds on one CPU core.
SMALL_TOY = [
    "model.hidden=32", "model.depth=2", "model.time_frequency_dim=16",
    "data.num_samples=4096", "train.batch_size=64", "train.max_steps=20", "train.warmup_steps=2",
    "train.log_every=5", "train.checkpoint_every=10", "train.keep_checkpoints=3",
    "sample.num_samples=500", "sample.steps=4",
]


def reset_accelerate() -> None:
    """Accelerate keeps process-wide singletons; reset them so the next Accelerator starts fresh."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()


def toy_recipe(*overrides: str, base: Sequence[str] = SMALL_TOY):
    from mmflow.tasks import load_recipe

    return load_recipe(REPO / "recipes" / "toy2d.yaml", [*base, *overrides])
