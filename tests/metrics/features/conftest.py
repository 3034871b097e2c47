"""Session fixtures: tiny random CLIP / CLAP folders (built by tiny_hf_models.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_hf_models import save_tiny_clap, save_tiny_clip


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("features") / "clip")


@pytest.fixture(scope="session")
def tiny_clap(tmp_path_factory) -> Path:
    return save_tiny_clap(tmp_path_factory.mktemp("features") / "clap")
