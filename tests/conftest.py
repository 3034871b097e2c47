"""Shared fixtures: small toy recipes and a clean Accelerate state per test."""

from __future__ import annotations

import os

import pytest

from toy_recipes import REPO, SMALL_TOY, reset_accelerate, toy_recipe  # noqa: F401  (tests import REPO from here)


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test` runs one worker per core, up to 4), each worker gets its share of the
    cores for torch's intra-op threads: two workers of two threads each on 2 cores would oversubscribe them."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        import torch

        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # command-line runs the tests start inherit it
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    yield
    reset_accelerate()


@pytest.fixture
def fresh_accelerate():
    """Call it between two trainings with different precision inside one test."""
    return reset_accelerate


@pytest.fixture(scope="session")
def make_toy_recipe():
    """make_toy_recipe("train.max_steps=50", ...) -> a validated small toy Recipe."""
    return toy_recipe


@pytest.fixture
def small_toy_overrides() -> list[str]:
    """The overrides that make recipes/toy2d.yaml train in seconds (for command-line runs)."""
    return list(SMALL_TOY)
