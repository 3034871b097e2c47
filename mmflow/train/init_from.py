"""`train.init_from`: start a run's trained models from another run's weights (fine-tuning, staged training).

The source is a run folder (its model/ export, else its newest checkpoint), a checkpoint folder or an
exported model folder; each trained model of the new run loads models/<name>_ema (where saved) or
models/<name>. Architectures must match, except where a model knows how to widen itself
(`adapt_init_state`: an MM-DiT gaining image-to-video input channels starts them at zero, so the new
model begins exactly as the old one). Only a fresh start reads it: `--resume` continues the run's own
checkpoint. The optimizer, EMA and step start fresh.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from mmflow.config import ConfigError
from mmflow.model_io import CorruptModel, load_state_dict, load_weights_strict
from mmflow.train.checkpoint import MANIFEST, list_checkpoints

logger = logging.getLogger("mmflow.train")

__all__ = ["init_from", "source_folder"]


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


def init_from(models: dict[str, nn.Module], path: Path) -> None:
    """Load each of `models` (freshly built) from `path`'s weights, EMA first; errors name train.init_from."""
    folder = source_folder(path)
    for name, model in models.items():
        src = next((d for d in (folder / "models" / f"{name}_ema", folder / "models" / name) if d.is_dir()), None)
        if src is None:
            raise ConfigError(f"{folder} has no models/{name} to start the run's {name!r} from", "train.init_from")
        state = load_state_dict(src)
        changes: list[str] = []
        if hasattr(model, "adapt_init_state"):
            state, changes = model.adapt_init_state(state)
        try:
            load_weights_strict(model, state, str(src))
        except CorruptModel as e:
            raise ConfigError(f"{e} (init_from needs the same architecture: model size, patch size, latent "
                              f"channels)", "train.init_from") from None
        logger.info("initialised %s from %s%s", name, src, "".join(f"; {c}" for c in changes))
