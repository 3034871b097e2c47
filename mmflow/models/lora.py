"""LoRA adapters on a model's linear layers, through peft: add, save, load, scale, compose and fold.

A LoRA adapter adds (alpha / rank) * scale * B A x to a linear layer's output, A (rank, in) random and
B (out, rank) zero at the start, so a fresh adapter leaves the model unchanged. The recipe's
`train.lora` (LoraConfig) names the layers: groups of MM-DiT layers (TARGET_GROUPS) or fnmatch patterns
over module names ("blocks.*.x_qkv", "final_layer.linear"). The base weights are frozen; only A and B train.

An adapter folder is peft's: adapter_config.json (a peft LoraConfig whose base_model_name_or_path points
at the base model folder) + adapter_model.safetensors (keys base_model.model.<module>.lora_A.weight), so
`peft.PeftModel.from_pretrained(model, folder)` loads it too.

    add_lora(model, LoraConfig(rank=8, targets=["attention"]))     # freezes everything else
    save_adapter(model, "out/adapter", settings, base="runs/base/model")
    load_adapter(other, "out/a", "adapter0", scale=0.7)           # several adapters compose (their updates add)
    plain = merged_copy(other)                                     # the adapters folded into the weights
"""

from __future__ import annotations

import copy
import fnmatch
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from mmflow.config import ConfigError, check
from mmflow.errors import MissingInput, UserError
from mmflow.model_io import CorruptModel, build_model, load_weights_strict, read_json_object, read_safetensors
from mmflow.utils.fs import atomic_folder

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "AdapterMismatch", "LoraConfig", "TARGET_GROUPS", "add_lora",
           "adapter_names", "is_adapter_folder", "load_adapter", "load_adapter_state", "merged_copy",
           "resolve_targets", "save_adapter", "set_scale"]

ADAPTER_CONFIG = "adapter_config.json"  # peft's file names
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # what a PeftModel's saved keys start with
TRAINED_ADAPTER = "default"  # peft's name for the adapter a run trains

# Named groups of the MM-DiT's linear layers (mmflow.models.mmdit), both streams and the text refiner; absent
# ones (the last block's text query, SD3.5's second attention, a refiner) simply match nothing.
TARGET_GROUPS: dict[str, tuple[str, ...]] = {
    "attention": ("blocks.*.x_qkv", "blocks.*.x_proj", "blocks.*.x_qkv2", "blocks.*.x_proj2",
                  "blocks.*.c_qkv", "blocks.*.c_kv", "blocks.*.c_proj", "text_refiner.*.x_qkv", "text_refiner.*.x_proj"),
    "mlp": ("blocks.*.x_mlp.fc1", "blocks.*.x_mlp.fc2", "blocks.*.c_mlp.fc1", "blocks.*.c_mlp.fc2",
            "text_refiner.*.x_mlp.fc1", "text_refiner.*.x_mlp.fc2"),
    "modulation": ("blocks.*.x_modulation", "blocks.*.c_modulation", "final_layer.modulation",
                   "text_refiner.*.x_modulation"),
}


class AdapterMismatch(UserError, ValueError):
    """An adapter that does not fit the model it is loaded into (made for another base model)."""


@dataclass
class LoraConfig:
    """train.lora: train LoRA adapters on a base model (train.init_from) instead of all its weights."""

    rank: int = field(default=16, metadata={"min": 1, "help": "r: inner width of each adapter"})
    alpha: float = field(default=16.0, metadata={"min": 0.0, "min_exclusive": True,
                                                 "help": "the update is scaled by alpha / rank"})
    dropout: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0, "max_exclusive": True,
                                                  "help": "dropout on each adapter's input, training only (drawn from torch's "
                                                          "global RNG: > 0 ties a run to its process count)"})
    targets: list[str] = field(default_factory=lambda: ["attention"], metadata={
        "help": "groups (attention: q/k/v/out of both streams, mlp, modulation: adaLN) or module-name "
                "patterns (fnmatch, e.g. blocks.*.x_qkv)"})

    def validate(self) -> None:
        check(bool(self.targets), "targets", f"name at least one group ({', '.join(TARGET_GROUPS)}) or pattern")


def _peft() -> Any:
    import peft  # imported on use: it costs seconds, and most commands never need it
    import peft.functional  # noqa: F401  (peft's API for models that are not PeftModels)

    return peft


def _adaptable(model: nn.Module) -> dict[str, nn.Module]:
    """The model's linear layers by module name, adapter-wrapped ones under their own name (not base_layer)."""
    layers: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        parts = name.split(".")
        if any(p.startswith("lora_") for p in parts):  # an adapter's own A / B layers
            continue
        if parts[-1] == "base_layer":
            layers[".".join(parts[:-1])] = module
        elif isinstance(module, nn.Linear):
            layers[name] = module
    return layers


def resolve_targets(model: nn.Module, targets: list[str], key: str = "train.lora.targets") -> list[str]:
    """Module names of the linear layers `targets` select (groups or fnmatch patterns), in model order;
    a target that selects none is a ConfigError naming it and the layers there are."""
    layers = list(_adaptable(model))
    chosen: set[str] = set()
    for target in targets:
        patterns = TARGET_GROUPS.get(target, (target,))
        hits = {n for n in layers if any(fnmatch.fnmatchcase(n, p) for p in patterns)}
        if not hits:
            shown = ", ".join(layers[:12]) + (", ..." if len(layers) > 12 else "")
            raise ConfigError(f"LoRA target {target!r} matches no linear layer of this {type(model).__name__} "
                              f"(groups: {', '.join(TARGET_GROUPS)}; or a module-name pattern; its linear layers: "
                              f"{shown})", key)
        chosen |= hits
    return [n for n in layers if n in chosen]


def _peft_config(rank: int, alpha: float, dropout: float, modules: list[str], base: str | None = None) -> Any:
    return _peft().LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(modules),
                              base_model_name_or_path=base)


def _inject(model: nn.Module, config: Any, name: str) -> None:
    with warnings.catch_warnings():  # peft warns at a second adapter; several adapters are meant here
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        _peft().functional.inject_adapter_in_model(config, model, adapter_name=name)


def add_lora(model: nn.Module, settings: LoraConfig, name: str = TRAINED_ADAPTER) -> list[str]:
    """Inject a fresh trainable adapter `name` into the layers settings.targets select and freeze every other
    weight of `model` (in place; it stays the same class). Returns the adapted module names."""
    modules = resolve_targets(model, settings.targets)
    _inject(model, _peft_config(settings.rank, settings.alpha, settings.dropout, modules), name)
    for pname, p in model.named_parameters():  # peft freezes the base too; this states the contract
        p.requires_grad_(f".{name}." in pname and ".lora_" in pname)
    return modules


def adapter_names(model: nn.Module) -> list[str]:
    """The adapters injected into `model`, in the order they were added."""
    names: dict[str, None] = {}
    for module in model.modules():
        if isinstance(module, _peft().tuners.lora.LoraLayer):
            names.update(dict.fromkeys(module.lora_A))
    return list(names)


def _adapter_state(model: nn.Module, name: str) -> dict[str, Tensor]:
    """Adapter `name`'s weights, keyed as peft saves them (<module>.lora_A.weight, no adapter name)."""
    state = _peft().functional.get_peft_model_state_dict(model, adapter_name=name)
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def save_adapter(model: nn.Module, folder: str | Path, settings: LoraConfig, base: str | Path,
                 name: str = TRAINED_ADAPTER) -> Path:
    """Write adapter `name` of `model` as a peft adapter folder (atomically) pointing at `base`."""
    state = _adapter_state(model, name)
    modules = sorted({k.split(".lora_")[0] for k in state})
    config = _peft_config(settings.rank, settings.alpha, settings.dropout, modules, str(base))
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        save_file({PEFT_PREFIX + k: v for k, v in state.items()}, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        config.save_pretrained(str(tmp))
    return folder


def is_adapter_folder(folder: str | Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def _read_adapter(folder: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(adapter_config.json, weights keyed <module>.lora_A.weight) of a peft LoRA adapter folder."""
    if not is_adapter_folder(folder):
        raise MissingInput(f"{folder}: no {ADAPTER_CONFIG} (a LoRA adapter folder holds {ADAPTER_CONFIG} + "
                           f"{ADAPTER_WEIGHTS})")
    config = read_json_object(folder / ADAPTER_CONFIG)
    if config.get("peft_type") != "LORA":
        raise CorruptModel(f"{folder / ADAPTER_CONFIG}: peft_type {config.get('peft_type')!r} is not a LoRA adapter")
    state = read_safetensors(folder / ADAPTER_WEIGHTS)
    return config, {k.removeprefix(PEFT_PREFIX): v for k, v in state.items()}


def _check_fits(model: nn.Module, state: dict[str, Tensor], folder: Path) -> list[str]:
    """The modules `state` adapts, after checking each is a linear layer of `model` of the right width."""
    layers = _adaptable(model)
    modules = sorted({k.split(".lora_")[0] for k in state})
    missing = [m for m in modules if m not in layers]
    if missing:
        raise AdapterMismatch(f"{folder}: the adapter is for another model: {len(missing)} of its layers are not "
                              f"linear layers of this {type(model).__name__}: {missing[:6]}")
    bad = []
    for key, tensor in state.items():
        module, _, part = key.partition(".lora_")
        layer = layers[module]
        want = layer.in_features if part.startswith("A") else layer.out_features
        got = tensor.shape[1] if part.startswith("A") else tensor.shape[0]
        if tensor.ndim != 2 or got != want:
            bad.append(f"{key}: {tuple(tensor.shape)} vs layer {layer.in_features} -> {layer.out_features}")
    if bad:
        raise AdapterMismatch(f"{folder}: the adapter is for another base model: shapes do not fit: {bad[:6]}")
    return modules


def load_adapter_state(model: nn.Module, folder: str | Path, name: str = TRAINED_ADAPTER) -> None:
    """Overwrite the weights of adapter `name`, already in `model`, with a saved adapter's (a run's resume)."""
    folder = Path(folder)
    _, state = _read_adapter(folder)
    _check_fits(model, state, folder)
    result = _peft().functional.set_peft_model_state_dict(model, state, adapter_name=name)
    own = {k.split(".lora_")[0] for k in _adapter_state(model, name)}
    unexpected = [k for k in result.unexpected_keys if ".lora_" in k]
    if unexpected or own != {k.split(".lora_")[0] for k in state}:
        raise AdapterMismatch(f"{folder}: the adapter's layers differ from adapter {name!r} of the model "
                              f"(unexpected: {unexpected[:6]})")


def load_adapter(model: nn.Module, folder: str | Path, name: str, scale: float = 1.0) -> list[str]:
    """Add the adapter saved in `folder` to `model` as adapter `name`, weighted by `scale` (0: no effect),
    active alongside any adapters already there, frozen. Returns the adapted module names; an adapter made
    for another base model is refused (AdapterMismatch naming the layers)."""
    folder = Path(folder)
    if name in adapter_names(model):
        raise ValueError(f"the model already has an adapter named {name!r}")
    config, state = _read_adapter(folder)
    modules = _check_fits(model, state, folder)
    try:
        rank, alpha = int(config["r"]), float(config["lora_alpha"])
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptModel(f"{folder / ADAPTER_CONFIG}: needs numbers 'r' and 'lora_alpha' ({e})") from None
    _inject(model, _peft_config(rank, alpha, 0.0, modules), name)
    load_adapter_state(model, folder, name)
    set_scale(model, name, scale)
    _peft().functional.set_adapter(model, adapter_names(model), inference_mode=True)  # all active, none trainable
    return modules


def set_scale(model: nn.Module, name: str, scale: float) -> None:
    """Weight adapter `name`'s update by `scale` (times alpha / rank)."""
    for module in model.modules():
        if isinstance(module, _peft().tuners.lora.LoraLayer):
            module.set_scale(name, scale)


def merged_copy(model: nn.Module) -> nn.Module:
    """A plain copy of a registered model (no adapter layers) whose weights hold every active adapter's
    update at its scale: saved with save_model, it samples as `model` does."""
    merged = copy.deepcopy(model)
    for module in merged.modules():
        if isinstance(module, _peft().tuners.lora.LoraLayer):
            module.merge(adapter_names=[a for a in module.active_adapters if a in module.lora_A])
    state = merged.state_dict()
    plain = build_model(model.model_type, model.config)
    folded = {}
    for key in plain.state_dict():
        parent, _, leaf = key.rpartition(".")
        wrapped = f"{parent}.base_layer.{leaf}" if parent else f"base_layer.{leaf}"
        folded[key] = state[key] if key in state else state.get(wrapped, torch.empty(0))
    load_weights_strict(plain, folded, f"{type(model).__name__} with its adapters merged")
    return plain.to(next(model.parameters()).device).train(model.training)
