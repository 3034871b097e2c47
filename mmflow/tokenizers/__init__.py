"""Modality tokenizers: VAEs that compress images, videos and audio into latents for the flow model."""

from mmflow.tokenizers.base import DiagonalGaussian, NoiseFn, Tokenizer, TokenizerOutput

__all__ = ["DiagonalGaussian", "NoiseFn", "Tokenizer", "TokenizerOutput"]
from mmflow.tokenizers.image_vae import (  # noqa: E402
    IMAGE_VAE_PRESETS, ImageVAE, ImageVAEConfig, image_vae_config,
)
from mmflow.tokenizers.latent_stats import LatentMoments, apply_latent_stats, measure_latent_stats  # noqa: E402

__all__ += ["IMAGE_VAE_PRESETS", "ImageVAE", "ImageVAEConfig", "image_vae_config"]
__all__ += ["LatentMoments", "apply_latent_stats", "measure_latent_stats"]
from mmflow.tokenizers.video_vae import (  # noqa: E402
    VIDEO_VAE_PRESETS, VideoVAE, VideoVAEConfig, video_vae_config,
)
from mmflow.tokenizers.audio_vae import (  # noqa: E402
    AUDIO_VAE_PRESETS, AudioVAE, AudioVAEConfig, audio_vae_config, prepare_audio,
)
from mmflow.tokenizers.losses import (  # noqa: E402  (registers "patch_discriminator")
    MelLoss, MultiResolutionSTFTLoss, PatchDiscriminator, PatchDiscriminatorConfig, VAELoss, VAELossConfig,
    VAELossOutput, adaptive_adv_weight, hinge_d_loss, hinge_g_loss, kl_loss, reconstruction_l1, stft_distance,
)

__all__ += ["VIDEO_VAE_PRESETS", "VideoVAE", "VideoVAEConfig", "video_vae_config"]
__all__ += ["AUDIO_VAE_PRESETS", "AudioVAE", "AudioVAEConfig", "audio_vae_config", "prepare_audio"]
__all__ += ["MelLoss", "MultiResolutionSTFTLoss", "PatchDiscriminator", "PatchDiscriminatorConfig", "VAELoss",
            "VAELossConfig", "VAELossOutput", "adaptive_adv_weight", "hinge_d_loss", "hinge_g_loss", "kl_loss",
            "reconstruction_l1", "stft_distance"]
