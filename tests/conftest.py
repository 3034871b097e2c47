"""Shared fixtures: small toy recipes and a clean Accelerate state per test."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test` runs one worker per core, up to 4), each worker gets its share of the
    cores for torch's intra-op threads: two workers of two threads each on 2 cores would oversubscribe them."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        import torch

        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # command-line runs the tests start inherit it
        torch.set_num_threads(threads)

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


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    yield
    reset_accelerate()


@pytest.fixture
def fresh_accelerate():
    """Call it between two trainings with different precision inside one test."""
    return reset_accelerate


def toy_recipe(*overrides: str, base: Sequence[str] = SMALL_TOY):
    from mmflow.tasks import load_recipe

    return load_recipe(REPO / "recipes" / "toy2d.yaml", [*base, *overrides])


@pytest.fixture(scope="session")
def make_toy_recipe():
    """make_toy_recipe("train.max_steps=50", ...) -> a validated small toy Recipe."""
    return toy_recipe


@pytest.fixture
def small_toy_overrides() -> list[str]:
    """The overrides that make recipes/toy2d.yaml train in seconds (for command-line runs)."""
    return list(SMALL_TOY)
