"""Modality tokenizers: VAEs that compress images, videos and audio into latents for the flow model."""

from mmflow.tokenizers.base import DiagonalGaussian, Tokenizer

__all__ = ["DiagonalGaussian", "Tokenizer"]
from mmflow.tokenizers.image_vae import (  # noqa: E402
    IMAGE_VAE_PRESETS, ImageVAE, ImageVAEConfig, ImageVAEOutput, image_vae_config,
)
from mmflow.tokenizers.latent_stats import LatentMoments, apply_latent_stats, measure_latent_stats  # noqa: E402

__all__ += ["IMAGE_VAE_PRESETS", "ImageVAE", "ImageVAEConfig", "ImageVAEOutput", "image_vae_config"]
__all__ += ["LatentMoments", "apply_latent_stats", "measure_latent_stats"]
