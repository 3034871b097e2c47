"""The probes in checkpoints/probes/ load as "probe:<name>" features; with ../shared present, they are
as accurate on (a fixed part of) their held-out split as their config.json says, within a margin."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from mmflow.metrics.features import get_features
from mmflow.metrics.probes import load_probe
from mmflow.metrics.probes.data import is_held_out, load_labelled_folder
from mmflow.metrics.probes.train import PROBE_SETS, probe_set

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data"
DATA = {"emoji_video": "emoji_video64", "music": "music16k"}
# Accuracy floors on the whole held-out split (125 clips, 64 clips; measured: BENCHMARKS.md "Probe classifiers")
FLOORS = {"emoji_video": {"motion": 0.9, "background": 0.95},
          "music": {"key": 0.85, "mode": 0.88, "instrument": 0.95}}


@pytest.mark.parametrize("name", PROBE_SETS)
def test_shipped_probe_loads_as_features(name):
    feats = get_features(f"probe:{name}")
    probe = load_probe(name=name)
    x = torch.rand(2, *probe.config.media_shape) * 2 - 1
    v = feats(x)
    assert v.shape == (2, feats.dim) and v.dtype == torch.float32 and torch.isfinite(v).all()
    torch.testing.assert_close(v, probe.features(x))
    assert feats.modality == probe.config.modality and feats.name == f"probe:{name}"
    assert len(feats.describe()["weights_sha256"]) == 64
    assert set(probe.config.held_out_accuracy) == set(probe.attributes)
    assert name in probe.config.command and "--data" in probe.config.command
    folder = Path(__file__).resolve().parents[3] / "checkpoints" / "probes" / name
    assert sum(f.stat().st_size for f in folder.iterdir()) < 5 * 2**20


@pytest.mark.parametrize("name", PROBE_SETS)
def test_shipped_probe_accuracy_on_held_out(name):
    folder = SHARED / DATA[name]
    if not folder.is_dir():
        pytest.skip(f"{folder} is not here (the shared data folder)")
    spec = probe_set(name)
    start = time.perf_counter()
    items = load_labelled_folder(folder, spec.labels, spec.read, tag=name, cache=None, only=is_held_out)
    probe = load_probe(name=name)
    acc = probe.accuracy(items.media, items.labels)
    print(name, acc, f"{time.perf_counter() - start:.1f} s")
    assert len(items.names) == probe.config.held_out_items
    for attr, floor in FLOORS[name].items():
        assert acc[attr] >= floor, (attr, acc)
        # what config.json claims, up to one item (training measured on the float16 decode cache)
        assert acc[attr] == pytest.approx(probe.config.held_out_accuracy[attr], abs=1.01 / len(items.names))
