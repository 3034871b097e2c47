"""Weight converters from other frameworks; the only place that knows their key names and conventions
(diffusers' sigma = 1 - t time and eps - z output are converted here, never in the models)."""

from mmflow.interop.diffusers_sd3 import (
    convert_diffusers_sd3,
    convert_sd3_state_dict,
    load_diffusers_sd3,
    mmdit_config_from_sd3,
)
from mmflow.interop.diffusers_sd3_pipeline import convert_diffusers_sd3_pipeline, read_sd3_pipeline
from mmflow.interop.diffusers_vae import (
    convert_diffusers_vae,
    convert_diffusers_vae_state_dict,
    image_vae_config_from_diffusers,
    load_diffusers_vae,
)

__all__ = ["convert_diffusers_sd3", "convert_sd3_state_dict", "load_diffusers_sd3", "mmdit_config_from_sd3"]
__all__ += ["convert_diffusers_vae", "convert_diffusers_vae_state_dict", "image_vae_config_from_diffusers",
            "load_diffusers_vae"]
__all__ += ["convert_diffusers_sd3_pipeline", "read_sd3_pipeline"]
