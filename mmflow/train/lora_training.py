"""`train.lora`: a run that trains LoRA adapters on a base model (train.init_from) instead of its weights.

    train:
      init_from: runs/base            # the base: a run, checkpoint or exported model folder
      lora: {rank: 8, alpha: 8, dropout: 0.0, targets: [attention, mlp]}

The base weights load from init_from (on --resume too: checkpoints hold none of them) and stay frozen;
the optimizer and the EMA see the adapters only. Checkpoints (accelerate's model state) and the exported
models/<name> and models/<name>_ema hold only the adapter, as peft adapter folders whose config points at
the base, and pipeline.json names the base as "base_model": FlowPipeline loads the base, then the adapter.

A run may train through another decoder of the base's latents than the base's own tokenizer (a decoder-only
fine-tune, model.freeze_encoder, for sounds or images the shipped decoder renders badly): the recipe's tokenizer
must encode as the base's does (same encoder weights to float16 rounding, same latent statistics; checked before
any work), and the export bundles it, so the run samples through the decoder it was validated with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor, nn

from mmflow.config import ConfigError
from mmflow.model_io import CorruptModel, load_model, read_json_object
from mmflow.models.lora import LoraConfig, add_lora, load_adapter_state, save_adapter
from mmflow.train.init_from import source_folder

__all__ = ["BASE_FROM_CWD_KEY", "BASE_MODEL_KEY", "LoraTraining", "cast_frozen", "check_same_latents",
           "tokenizer_override"]

BASE_MODEL_KEY = "base_model"  # pipeline.json: the folder a LoRA export's adapters apply to
# ... and that folder relative to where training ran, when it lay below it: a clone moved or copied elsewhere
# (another machine, CI) finds its base again when sampled from its own root
BASE_FROM_CWD_KEY = "base_model_from_cwd"
ACCELERATE_WEIGHTS = "model.safetensors"  # what accelerate's save_state names the first model's state


def cast_frozen(model: nn.Module, dtype: str) -> None:
    """Store the frozen weights of `model` (a LoRA run's base) in `dtype` (train.frozen_dtype, a torch dtype's
    name); the trainable adapters stay float32."""
    for p in model.parameters():
        if not p.requires_grad:
            p.data = p.data.to(getattr(torch, dtype))


def check_same_latents(tokenizer: Path, base_tokenizer: Path) -> None:
    """ConfigError (model.tokenizer) unless `tokenizer` encodes as `base_tokenizer` does: the same type and
    latent channels, latent statistics, and encoder weights (to float16 rounding: a shipped float16 folder and
    a float32 run of it are one encoder). Only the decoder may differ."""
    mine, theirs = load_model(tokenizer), load_model(base_tokenizer)

    def refuse(what: str) -> None:
        raise ConfigError(f"{tokenizer} is not a decoder of the LoRA base's latents ({base_tokenizer}): {what}; a "
                          f"LoRA trains on the latents the base was trained on, so its tokenizer must be the base's "
                          f"or a decoder-only fine-tune of it (model.freeze_encoder=true train.init_from="
                          f"{base_tokenizer})", "model.tokenizer")

    if type(mine) is not type(theirs) or mine.config.latent_channels != theirs.config.latent_channels:
        refuse(f"{type(mine).__name__} with {mine.config.latent_channels} latent channels against "
               f"{type(theirs).__name__} with {theirs.config.latent_channels}")
    for field in ("latent_shift", "latent_scale"):
        a, b = getattr(mine.config, field, None), getattr(theirs.config, field, None)
        if (a is None) != (b is None) or (a is not None and not torch.allclose(torch.tensor(a), torch.tensor(b),
                                                                               rtol=1e-3, atol=1e-6)):
            refuse(f"its {field} differs")
    for m, t in zip(mine.encoder_modules(), theirs.encoder_modules()):
        for (name, x), (_, y) in zip(m.state_dict().items(), t.state_dict().items()):
            if x.shape != y.shape or not torch.allclose(x.float(), y.float(), rtol=2e-3, atol=1e-4):
                refuse(f"its encoder differs (at {name})")


def tokenizer_override(tokenizer: str | None, base: Path) -> Path | None:
    """The recipe's tokenizer folder where it is not the one the base (an exported folder or checkpoint) bundles,
    after check_same_latents; None where it is the same (or the base bundles none)."""
    info = read_json_object(base / "pipeline.json") if (base / "pipeline.json").is_file() else {}
    record = (info.get("components") or {}).get("tokenizer")
    if tokenizer is None or record is None:
        return None
    from mmflow.tasks.encoders import bundled_tokenizer, folder_fingerprint

    base_tokenizer = bundled_tokenizer(base, record)
    if folder_fingerprint(Path(tokenizer)) == record["fingerprint"]:
        return None
    check_same_latents(Path(tokenizer), base_tokenizer)
    return Path(tokenizer)


class LoraTraining:
    """What a LoRA run does beside a full fine-tune: adapt the trained model, save and load adapters only.
    `tokenizer`: the recipe's tokenizer folder (None in pixel space)."""

    def __init__(self, settings: LoraConfig, init_from: str, tokenizer: str | None = None) -> None:
        self.settings = settings
        self.base = source_folder(Path(init_from)).resolve()
        self.model_name = ""
        self.tokenizer = tokenizer_override(tokenizer, self.base)  # a decoder of the base's latents, or None

    def export_components(self, models_dir: Path) -> dict[str, Any]:
        """pipeline.json's "components" of a LoRA export: the run's own tokenizer where it is not the base's (the
        base holds every other frozen component)."""
        if self.tokenizer is None:
            return {}
        from mmflow.tasks.encoders import export_tokenizer

        return {"tokenizer": export_tokenizer(self.tokenizer, models_dir)}

    def pipeline_info(self) -> dict[str, str]:
        """pipeline.json's pointers at the base: its absolute path, and its path from the working directory."""
        info = {BASE_MODEL_KEY: str(self.base)}
        if self.base.is_relative_to(Path.cwd().resolve()):
            info[BASE_FROM_CWD_KEY] = str(self.base.relative_to(Path.cwd().resolve()))
        return info

    def attach(self, models: dict[str, nn.Module], trained: list[str]) -> None:
        """Freeze the one trained model (already loaded from the base) and add the adapter to it."""
        if len(trained) != 1:
            raise ConfigError(f"LoRA adapts one trained model; this task trains {trained}", "train.lora")
        self.model_name = trained[0]
        add_lora(models[self.model_name], self.settings)

    def save(self, model: nn.Module, folder: Path) -> None:
        """An exported model: the adapter of `model` (bare, not wrapped) as a peft folder pointing at the base."""
        save_adapter(model, folder, self.settings, self.base)

    def load(self, model: nn.Module, folder: Path) -> None:
        """The adapter of an exported model folder into `model` (an EMA shadow on resume)."""
        load_adapter_state(model, folder)

    @staticmethod
    def adapter_only(models: list[nn.Module], weights: list[dict[str, Tensor]], output_dir: str) -> None:
        """accelerate's save_state pre-hook: each model's state keeps only its trainable tensors (the adapters)."""
        for i, model in enumerate(models):
            trainable = {n for n, p in model.named_parameters() if p.requires_grad}
            weights[i] = {k: v for k, v in weights[i].items() if k in trainable}

    def load_state(self, accelerator: Any, model: nn.Module, path: Path) -> None:
        """accelerator.load_state of a LoRA checkpoint (it holds the adapters only, so not strictly), after
        checking its model state holds exactly the adapter tensors of `model` (as prepared, maybe wrapped)."""
        with safe_open(str(path / ACCELERATE_WEIGHTS), framework="pt") as f:
            saved = set(f.keys())
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        if saved != trainable:
            raise CorruptModel(f"{path / ACCELERATE_WEIGHTS}: not this run's adapters (missing "
                               f"{sorted(trainable - saved)[:4]}, unexpected {sorted(saved - trainable)[:4]}): "
                               f"was train.lora changed?")
        accelerator.load_state(str(path), strict=False)
