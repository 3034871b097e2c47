"""Velocity models. Importing this package registers every built-in model type."""

from mmflow.models.mlp import MLPVelocity, MLPVelocityConfig
from mmflow.models.mmdit import MMDIT_PRESETS, MMDiT, MMDiTConfig, mmdit_config
from mmflow.models.token_text import TokenTextEmbedder  # noqa: F401  (registers "token_text")
from mmflow.models.registry import MODEL_REGISTRY, build_model, load_model, register_model, save_model

__all__ = ["MLPVelocity", "MLPVelocityConfig", "MODEL_REGISTRY", "build_model", "load_model", "register_model", "save_model"]
__all__ += ["MMDIT_PRESETS", "MMDiT", "MMDiTConfig", "mmdit_config"]
