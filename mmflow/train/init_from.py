"""`train.init_from`: start a run's trained models from another run's weights (fine-tuning, staged training).

The source is a run folder (its model/ export, else its newest checkpoint), a checkpoint folder, an
exported model folder, or one model's own folder (config.json + weights, as a shipped tokenizer in
checkpoints/tokenizers/); each trained model of the new run loads models/<name>_ema (where saved) or
models/<name>. Architectures must match, except where a model knows how to widen itself
(`adapt_init_state`: an MM-DiT gaining image-to-video input channels starts them at zero, so the new
model begins exactly as the old one). Only a fresh start reads it: `--resume` continues the run's own
checkpoint. The optimizer, EMA and step start fresh.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from mmflow.config import ConfigError, from_dict
from mmflow.model_io import CONFIG_NAME, CorruptModel, load_state_dict, load_weights_strict, read_json_object
from mmflow.train.checkpoint import MANIFEST, list_checkpoints

logger = logging.getLogger("mmflow.train")

__all__ = ["check_init_config", "check_same_config", "config_differences", "init_from", "init_model_folder",
           "model_folder", "source_folder"]


def source_folder(path: Path) -> Path:
    """The folder whose models/ to read: `path` itself if it holds models/, else a run's model/ export,
    else its newest checkpoint."""
    if (path / "models").is_dir():
        return path
    if (path / "model" / "models").is_dir():
        return path / "model"
    found = [ref for ref in list_checkpoints(path / "checkpoints") if (ref.path / MANIFEST).is_file()]  # complete ones
    if not found:
        raise ConfigError(f"{path} holds no models/ folder, no model/ export and no checkpoint to start from",
                          "train.init_from")
    return found[0].path


def config_differences(model: nn.Module, model_type: str, saved: Mapping[str, Any]) -> list[str]:
    """'field: X here, Y there' for each config field of `model` (built from the recipe) that differs from a
    saved model's (`model_type` and the "config" of its config.json), except the fields the model widens
    itself (`init_adaptable_fields`, see adapt_init_state) and those measured from data after training
    (`init_measured_fields`: a tokenizer's latent statistics)."""
    own_type = getattr(model, "model_type", None)
    if own_type != model_type:
        return [f"model type: {own_type!r} here, {model_type!r} there"]
    config = model.config
    legacy = getattr(model, "legacy_config_keys", ())
    try:
        theirs = from_dict(type(config), {k: v for k, v in saved.items() if k not in legacy})
    except ConfigError as e:
        return [f"its config.json does not read as a {type(config).__name__}: {e}"]
    if hasattr(config, "resolved"):  # defaults spelled out: None and its meaning are the same model
        config, theirs = config.resolved(), theirs.resolved()
    skip = set(getattr(model, "init_adaptable_fields", ())) | set(getattr(model, "init_measured_fields", ()))
    return [f"{f.name}: {getattr(config, f.name)!r} here, {getattr(theirs, f.name)!r} there"
            for f in dataclasses.fields(config) if f.name not in skip and getattr(config, f.name) != getattr(theirs, f.name)]


def check_same_config(model: nn.Module, model_type: str, saved: Mapping[str, Any], name: str, where: str) -> None:
    """ConfigError (train.init_from) listing what differs between the run's model `name` and the saved one."""
    diff = config_differences(model, model_type, saved)
    if diff:
        raise ConfigError(f"the recipe builds a {name!r} model that differs from {where}: {'; '.join(diff)} (the "
                          f"recipe's model section must describe the weights it starts from, e.g. model.mmdit's "
                          f"size, pos_embed, time_shift / time_scale; channels follow the tokenizer and text "
                          f"encoders)", "train.init_from")


def model_folder(folder: Path, name: str) -> Path:
    """models/<name>_ema (where saved), else models/<name> of a source_folder; ConfigError if neither is there."""
    src = next((d for d in (folder / "models" / f"{name}_ema", folder / "models" / name) if d.is_dir()), None)
    if src is None:
        raise ConfigError(f"{folder} has no models/{name} to start the run's {name!r} from", "train.init_from")
    return src


def init_model_folder(path: Path, name: str) -> Path:
    """The saved model a run's model `name` starts from: `path` itself where it is one model's folder
    (config.json + weights, no models/), else model_folder(source_folder(path), name)."""
    if (path / CONFIG_NAME).is_file() and not (path / "models").is_dir():
        return path
    return model_folder(source_folder(path), name)


def check_init_config(model: nn.Module, src: Path, name: str) -> None:
    """The saved model in folder `src` (config.json) is the one the recipe builds as `name`: else ConfigError."""
    meta = read_json_object(src / CONFIG_NAME) if (src / CONFIG_NAME).is_file() else {}
    if isinstance(meta.get("model_type"), str) and isinstance(meta.get("config"), dict) and hasattr(model, "config"):
        check_same_config(model, meta["model_type"], meta["config"], name, str(src / CONFIG_NAME))


def init_from(models: dict[str, nn.Module], path: Path) -> None:
    """Load each of `models` (freshly built) from `path`'s weights, EMA first, after checking each saved config
    is the one the recipe builds (before any weights are read); errors name train.init_from."""
    sources = {name: init_model_folder(path, name) for name in models}
    for name, model in models.items():
        check_init_config(model, sources[name], name)
    for name, model in models.items():
        src = sources[name]
        state = load_state_dict(src)
        changes: list[str] = []
        if hasattr(model, "adapt_init_state"):
            try:
                state, changes = model.adapt_init_state(state)
            except ValueError as e:  # weights the recipe's model cannot take as they are
                raise ConfigError(f"{src}: {e}", "train.init_from") from None
        try:
            load_weights_strict(model, state, str(src))
        except CorruptModel as e:
            raise ConfigError(f"{e} (init_from needs the same architecture: model size, patch size, latent "
                              f"channels)", "train.init_from") from None
        logger.info("initialised %s from %s%s", name, src, "".join(f"; {c}" for c in changes))
