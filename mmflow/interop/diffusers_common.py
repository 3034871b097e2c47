"""What every diffusers converter shares: finding a component folder, reading its (sharded) safetensors,
consuming a state dict key by key, and checking the converted state against the target model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from mmflow.errors import MissingInput
from mmflow.model_io import load_state_dict, read_json_object

WEIGHTS = "diffusion_pytorch_model.safetensors"
INDEX = "diffusion_pytorch_model.safetensors.index.json"


def component_folder(folder: Path, subfolder: str, class_name: str) -> Path:
    """The folder holding a component's config.json: `folder` itself or a pipeline's `<subfolder>/`."""
    if (folder / "config.json").exists():
        return folder
    if (folder / subfolder / "config.json").exists():
        return folder / subfolder
    raise MissingInput(f"{folder}: no config.json (nor {subfolder}/config.json); expected a diffusers "
                            f"{class_name} folder")


def read_config(folder: Path) -> dict[str, Any]:
    return read_json_object(folder / "config.json")


def resolve_config(diffusers_config: dict[str, Any], class_name: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """A diffusers config.json dict checked to be `class_name`'s, with unknown keys refused by name and
    absent keys filled with the class's __init__ defaults (what diffusers itself does)."""
    cls = diffusers_config.get("_class_name", class_name)
    if cls != class_name:
        raise ValueError(f"expected a diffusers {class_name} config, got _class_name {cls!r}")
    unknown = sorted(k for k in diffusers_config if not k.startswith("_") and k not in defaults)
    if unknown:
        raise ValueError(f"unknown {class_name} config keys {unknown}; known: {sorted(defaults)}")
    return {**defaults, **{k: v for k, v in diffusers_config.items() if not k.startswith("_")}}


def read_weights(folder: Path) -> dict[str, Tensor]:
    """A diffusers component's safetensors weights, sharded (with an index) or not."""
    return load_state_dict(folder, WEIGHTS, INDEX, hint="only safetensors weights are supported")


class StateSource:
    """Consumes a diffusers state dict key by key, remembering which keys were absent.

    `out` collects the converted tensors; whatever is still in `left` at the end is unexpected.
    """

    def __init__(self, state: dict[str, Tensor]) -> None:
        self.left = dict(state)
        self.missing: list[str] = []
        self.out: dict[str, Tensor] = {}

    def take(self, key: str, legacy: str | None = None) -> Tensor | None:
        """Pop `key` (or its older name `legacy`); record it as missing when neither is there."""
        if key in self.left:
            return self.left.pop(key)
        if legacy is not None and legacy in self.left:
            return self.left.pop(legacy)
        self.missing.append(key)
        return None

    def put(self, dst: str, *keys: str, fn: Callable[..., Tensor] = lambda t: t) -> None:
        tensors = [self.take(k) for k in keys]
        if all(t is not None for t in tensors):
            self.out[dst] = fn(*tensors)

    def linear(self, dst: str, src: str, fn: Callable[..., Tensor] = lambda t: t) -> None:
        """weight and bias of a linear, conv or norm layer."""
        for suffix in ("weight", "bias"):
            self.put(f"{dst}.{suffix}", f"{src}.{suffix}", fn=fn)

    def qkv(self, dst: str, srcs: tuple[str, ...]) -> None:
        """Separate q / k / v projections -> one fused projection (rows concatenated in that order)."""
        for suffix in ("weight", "bias"):
            self.put(f"{dst}.{suffix}", *(f"{s}.{suffix}" for s in srcs), fn=lambda *ts: torch.cat(ts, dim=0))

    def drop(self, *keys: str) -> None:
        """Keys the reference stores but the converted model does not need."""
        for k in keys:
            if self.left.pop(k, None) is None:
                self.missing.append(k)

    def check(self, build: Callable[[], nn.Module], what: str) -> dict[str, Tensor]:
        """The converted state, after checking it against the model `build()` makes (on the meta device).

        Raises ValueError naming every missing key, unexpected key and shape mismatch.
        """
        problems = []
        if self.missing:
            problems.append(f"missing keys (the config needs them): {sorted(self.missing)}")
        if self.left:
            problems.append(f"unexpected keys (not part of this config): {sorted(self.left)}")
        with torch.device("meta"):
            model = build()
        expected = {k: v.shape for k, v in model.state_dict().items()}
        bad_shapes = [f"{k}: converted {tuple(v.shape)} vs model {tuple(expected[k])}"
                      for k, v in self.out.items() if k in expected and v.shape != expected[k]]
        if bad_shapes:
            problems.append(f"shape mismatches: {bad_shapes}")
        if not problems and set(self.out) != set(expected):  # a converter bug rather than a checkpoint problem
            problems.append(f"converter produced {sorted(set(self.out) ^ set(expected))} inconsistently with "
                            f"{type(model).__name__}")
        if problems:
            raise ValueError(f"diffusers {what} state dict does not match its config: " + "; ".join(problems))
        return self.out


def instantiate(build: Callable[[], nn.Module], state: dict[str, Tensor], dtype: torch.dtype | None) -> nn.Module:
    """build() on the meta device (no init work or memory for weights that are overwritten), then assign."""
    with torch.device("meta"):
        model = build()
    model.load_state_dict(state, strict=True, assign=True)
    return model if dtype is None else model.to(dtype)
