"""Velocity models. Importing this package registers every built-in velocity model type.

The model-folder format and registry they register into is mmflow.model_io.
"""

from mmflow.models.mmdit import MMDIT_PRESETS, MMDiT, MMDiTConfig, mmdit_config
from mmflow.models.toy_mlp import MLPVelocity, MLPVelocityConfig

__all__ = ["MLPVelocity", "MLPVelocityConfig", "MMDIT_PRESETS", "MMDiT", "MMDiTConfig", "mmdit_config"]
