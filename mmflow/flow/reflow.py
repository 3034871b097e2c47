"""Rectified-flow reflow (Liu et al. 2022, "Flow straight and fast"): straighten a trained flow model's paths.

A teacher's ODE couples each noise x0 with the sample x1 it integrates to. Flow matching on those pairs (x_t on
the line between the pair's own x0 and x1, target x1 - x0, instead of independent noise and data) learns a
velocity field whose paths are straighter, so few Euler steps land near where many did. The pairs carry the
teacher's guidance: the student samples at guidance 1 (InstaFlow's use).

Straightness (Liu et al.'s S): along the Euler path of `steps` uniform steps, the mean squared deviation of the
velocity from the chord x1 - x0, over the chord's mean square: 0 for straight paths, the larger the more curved.

The pairs folder: pairs.safetensors {"x0": (N, ...), "x1": (N, ...)} float32 and pairs.json {"inputs": the N
prompts / labels (null: unconditional), "made_with": teacher fingerprint and sampler settings}, written
atomically; the task (mmflow/tasks/flow_task.py) makes it once, then trains on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import Dataset

from mmflow.utils.fs import atomic_folder

__all__ = ["PAIRS_FILE", "PAIRS_INFO", "ReflowPairs", "Straightness", "pairs_problem", "read_pairs", "straightness",
           "write_pairs"]

PAIRS_FILE, PAIRS_INFO = "pairs.safetensors", "pairs.json"


@dataclass
class Straightness:
    """relative: E_t ||(x1 - x0) - v_t||^2 / E ||x1 - x0||^2 (0 = straight); per_row (B,) of it; absolute: the
    numerator as a mean over elements."""

    relative: float
    absolute: float
    per_row: Tensor


def straightness(velocity: Callable[[Tensor, Tensor], Tensor], x0: Tensor, steps: int) -> Straightness:
    """Straightness of the Euler paths of `velocity(x (B, ...), t (B,)) -> (B, ...)` from noise x0 (B, ...)
    over `steps` uniform steps (t: 0 = noise -> 1 = data, as every path here)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    x, dt = x0, 1.0 / steps
    vs = []
    with torch.no_grad():
        for k in range(steps):
            v = velocity(x, torch.full((x.shape[0],), k * dt, device=x.device, dtype=x.dtype)).float()
            vs.append(v)
            x = x + dt * v.to(x.dtype)
    v = torch.stack(vs)  # (K, B, ...)
    chord = v.mean(0)  # (B, ...) = x1 - x0 of the Euler path
    dev = (v - chord).pow(2).flatten(2).mean(2).mean(0)  # (B,) mean over steps and elements
    size = chord.pow(2).flatten(1).mean(1)  # (B,)
    return Straightness(float(dev.mean() / size.mean().clamp_min(1e-12)), float(dev.mean()),
                        dev / size.clamp_min(1e-12))


def write_pairs(folder: Path, x0: Tensor, x1: Tensor, inputs: Sequence[Any], made_with: dict[str, Any]) -> None:
    """The pairs folder, replaced atomically (a stopped run leaves the old pairs or none, never half)."""
    if len(x0) != len(x1) or len(inputs) != len(x0):
        raise ValueError(f"{len(x0)} noises, {len(x1)} samples and {len(inputs)} inputs: one of each per pair")
    with atomic_folder(folder) as out:
        save_file({"x0": x0.float().contiguous(), "x1": x1.float().contiguous()}, str(out / PAIRS_FILE))
        (out / PAIRS_INFO).write_text(json.dumps({"inputs": list(inputs), "made_with": made_with}, indent=1))


def pairs_problem(folder: Path, made_with: dict[str, Any]) -> str | None:
    """Why the pairs folder cannot be used as the pairs `made_with` asks for (missing, unreadable, made by
    another teacher or sampler), or None."""
    info_path, data_path = folder / PAIRS_INFO, folder / PAIRS_FILE
    if not info_path.is_file() or not data_path.is_file():
        return f"{folder} holds no reflow pairs"
    try:
        info = json.loads(info_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return f"{info_path} is not readable ({e})"
    theirs = info.get("made_with") if isinstance(info, dict) else None
    if theirs != made_with:
        diff = sorted(k for k in {**made_with, **(theirs or {})} if (theirs or {}).get(k) != made_with.get(k))
        return f"the reflow pairs in {folder} were made with other settings ({', '.join(diff)})"
    return None


def read_pairs(folder: Path) -> tuple[Tensor, Tensor, list[Any]]:
    """(x0 (N, ...), x1 (N, ...), inputs) of a pairs folder."""
    data = load_file(str(folder / PAIRS_FILE))
    inputs = json.loads((folder / PAIRS_INFO).read_text())["inputs"]
    return data["x0"], data["x1"], inputs


class ReflowPairs(Dataset):
    """Items {"x0": noise, "x1": the teacher's sample from it, "input": its prompt / label (absent when
    unconditional)}."""

    def __init__(self, folder: Path) -> None:
        self.x0, self.x1, self.inputs = read_pairs(folder)

    def __len__(self) -> int:
        return len(self.x0)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"x0": self.x0[i], "x1": self.x1[i]}
        if self.inputs[i] is not None:
            item["input"] = self.inputs[i]
        return item
