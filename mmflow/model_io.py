"""The on-disk model format and the registry of model types: a folder with config.json + model.safetensors.

config.json holds {"model_type": <registered name>, "config": {...dataclass fields...}} so a model
loads without the recipe that trained it. Large models are split into shards with an index file
(`model.safetensors.index.json`, the Hugging Face layout). This is the ground floor every model
package (velocity models, tokenizers, text embedders) registers into with `@register_model`; it
imports none of them, so a loader of arbitrary folders imports the built-in ones first
(`import mmflow.builtin_models`).

    save_model(model, "runs/x/model/models/velocity")
    model = load_model("runs/x/model/models/velocity")   # the class its config.json names
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mmflow.config import ConfigError, from_dict, to_dict
from mmflow.errors import MissingInput, UserError
from mmflow.utils.fs import atomic_folder

MODEL_REGISTRY: dict[str, type[nn.Module]] = {}
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3

M = TypeVar("M", bound=type[nn.Module])


class CorruptModel(UserError, ValueError):
    """A model folder that cannot be used as it is: unreadable or non-JSON files, weights that do not
    fit the model, or weights that are not finite. The message names the file (and tensor)."""


def register_model(name: str) -> Callable[[M], M]:
    """Class decorator: the class needs `config_class` (a dataclass) and `__init__(self, config)`.

    An optional `legacy_config_keys` (tuple of str) names keys that older config.json files hold but
    the config no longer has (run-time settings moved out of it): `build_model` drops them.
    """

    def wrap(cls: M) -> M:
        if name in MODEL_REGISTRY and MODEL_REGISTRY[name] is not cls:
            raise ValueError(f"model type {name!r} is already registered by {MODEL_REGISTRY[name].__name__}")
        cls.model_type = name  # type: ignore[attr-defined]
        MODEL_REGISTRY[name] = cls
        return cls

    return wrap


def build_model(model_type: str, config: dict[str, Any] | Any, source: str | None = None) -> nn.Module:
    """Build a registered model from its type name and a config dict (validated strictly) or dataclass."""
    if model_type not in MODEL_REGISTRY:
        raise ConfigError(f"{source or 'model'}: unknown model type {model_type!r}; known: {sorted(MODEL_REGISTRY)} "
                          f"(import the package that registers it; `import mmflow.builtin_models` registers the built-in ones)")
    cls = MODEL_REGISTRY[model_type]
    if isinstance(config, dict):
        legacy = getattr(cls, "legacy_config_keys", ())
        config = {k: v for k, v in config.items() if k not in legacy}
        config = from_dict(cls.config_class, config, source=source)  # type: ignore[attr-defined]
    return cls(config)


def _contiguous_state(model: nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage and non-contiguous views: store independent copies
    def stored(v: torch.Tensor) -> torch.Tensor:
        v = v.detach()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        return v.contiguous().clone() if v.data_ptr() else v
    return {k: stored(v) for k, v in model.state_dict().items()}


def save_model(model: nn.Module, folder: str | os.PathLike, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
               dtype: torch.dtype | None = None) -> Path:
    """Write `model` as config.json + model.safetensors (sharded above `max_shard_bytes`), atomically.
    dtype: store floating-point weights in it (e.g. float16 halves a shipped model; load_model casts them
    back to the model's own dtype); None keeps each tensor's."""
    model_type = getattr(model, "model_type", None)
    if model_type is None:
        raise TypeError(f"{type(model).__name__} is not a registered model (use @register_model)")
    state = _contiguous_state(model, dtype)
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        (tmp / CONFIG_NAME).write_text(  # allow_nan=False: NaN is not JSON, and a NaN setting is a failure to see
            json.dumps({"model_type": model_type, "config": to_dict(model.config)}, indent=2, allow_nan=False) + "\n"
        )
        shards: list[dict[str, torch.Tensor]] = [{}]
        size = 0
        for k, v in state.items():
            nbytes = v.numel() * v.element_size()
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append({})
                size = 0
            shards[-1][k] = v
            size += nbytes
        if len(shards) == 1:
            save_file(shards[0], str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, shard in enumerate(shards):
                name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(tmp / name), metadata={"format": "pt"})
                weight_map.update({k: name for k in shard})
            total = sum(v.numel() * v.element_size() for v in state.values())
            (tmp / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return folder


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or CorruptModel naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptModel(f"{path}: not readable JSON ({e})") from e
    if not isinstance(data, dict):
        raise CorruptModel(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of one safetensors file; a truncated or garbage file -> CorruptModel naming it."""
    if not path.is_file():
        raise CorruptModel(f"{path}: missing (the model folder is incomplete)")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:  # what safetensors raises for bad bytes
        raise CorruptModel(f"{path}: not a readable safetensors file ({e})") from e
    for name, tensor in state.items():  # NaN weights would give NaN samples with no error anywhere
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            n_nan, n_inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
            raise CorruptModel(f"{path}: tensor {name!r} is not finite ({n_nan} NaN, {n_inf} inf of "
                               f"{tensor.numel()} values)")
    return state


def load_state_dict(folder: str | os.PathLike, weights: str = WEIGHTS_NAME, index: str = INDEX_NAME,
                    hint: str = "is this a model folder?") -> dict[str, torch.Tensor]:
    """Read the (possibly sharded: `index` maps keys to files) safetensors weights of a model folder,
    verified readable and finite. `weights`/`index`: the file names (other frameworks use their own)."""
    folder = Path(folder)
    if (folder / index).exists():
        weight_map = read_json_object(folder / index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CorruptModel(f"{folder / index}: missing key 'weight_map'")
        state: dict[str, torch.Tensor] = {}
        for name in sorted(set(weight_map.values())):
            state.update(read_safetensors(folder / name))
        return state
    if not (folder / weights).exists():
        raise MissingInput(f"{folder}: no {weights} or {index} ({hint})")
    return read_safetensors(folder / weights)


def load_weights_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `model`, naming every missing, unexpected or mis-shaped key."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {missing}")
        if unexpected:
            parts.append(f"unexpected keys: {unexpected}")
        if shapes:
            parts.append(f"shape mismatches: {shapes}")
        raise CorruptModel(f"{source}: weights do not fit the model; " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def load_model(folder: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a model folder written by `save_model` (no recipe needed); CorruptModel names what is wrong."""
    folder = Path(folder)
    cfg_path = folder / CONFIG_NAME
    if not cfg_path.exists():
        raise MissingInput(f"{folder}: no {CONFIG_NAME}; a model folder holds config.json + model.safetensors")
    meta = read_json_object(cfg_path)
    for key in ("model_type", "config"):
        if key not in meta:
            raise CorruptModel(f"{cfg_path}: missing key {key!r}")
    if not isinstance(meta["model_type"], str) or not isinstance(meta["config"], dict):
        raise CorruptModel(f"{cfg_path}: 'model_type' must be a string and 'config' an object")
    model = build_model(meta["model_type"], meta["config"], source=str(cfg_path))
    load_weights_strict(model, load_state_dict(folder), str(folder))
    return model.to(map_location)
