"""Frozen components a dry run can size without their folders: published encoders and VAEs by name.

`mmflow train RECIPE --dry-run` reads no weights and no data. A text encoder or tokenizer folder that is
present is sized from its config.json alone (the model built on the meta device); one that is missing
(a GPU-scale recipe checked on a laptop) is taken from these tables, matched by the encoder's key / the
tokenizer folder's name, or named with `--assume KEY=NAME` (`--assume tokenizer=sd3-vae`). The configs
are the published ones (openai/clip-vit-large-patch14, laion CLIP-bigG/14 as in SD3, google/t5-v1_1-xxl,
the SD3 / Flux 16-channel VAE), so the parameter counts are those of the real models.

    shape = encoder_shape(entry, assume)        # EncoderShape: widths, max_length, parameters
    tok = tokenizer_shape(path, assume)         # TokenizerShape: a meta-device VAE, its parameters
"""

from __future__ import annotations

import copy
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from mmflow.errors import UserError
from mmflow.text.default import TextEncoderNotFound, resolve_encoder_path
from mmflow.text.encoder import DTYPES, TextEncoderConfig

__all__ = ["KNOWN_SD3_TRANSFORMERS", "KNOWN_TEXT_ENCODERS", "KNOWN_TOKENIZERS", "EncoderShape", "TokenizerShape", "UnknownComponent", "encoder_present",
           "encoder_shape", "known_velocity", "meta_parameters", "tokenizer_shape"]


class UnknownComponent(UserError):
    """A frozen component's folder is missing and no known model stands in for it."""


# name -> (transformers class, its config class, config kwargs, aliases matched against the encoder's key)
KNOWN_TEXT_ENCODERS: dict[str, tuple[str, str, dict[str, Any], tuple[str, ...]]] = {
    "clip-l": ("CLIPTextModelWithProjection", "CLIPTextConfig",  # SD3's text_encoder (CLIP ViT-L/14)
               dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                    num_attention_heads=12, max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu"),
               ("clip-l", "clip-vit-l", "clip-vit-large-patch14", "text-encoder")),
    "clip-g": ("CLIPTextModelWithProjection", "CLIPTextConfig",  # SD3's text_encoder_2 (OpenCLIP bigG/14)
               dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                    num_attention_heads=20, max_position_embeddings=77, projection_dim=1280, hidden_act="gelu"),
               ("clip-g", "clip-bigg", "clip-vit-bigg-14", "text-encoder-2")),
    "t5-xxl": ("T5EncoderModel", "T5Config",  # SD3's text_encoder_3 (T5 v1.1 XXL, encoder only)
               dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                    feed_forward_proj="gated-gelu", relative_attention_num_buckets=32),
               ("t5-xxl", "t5", "t5xxl", "t5-v1-1-xxl", "text-encoder-3")),
    "t5-base": ("T5EncoderModel", "T5Config",  # Stable Audio Open's text encoder (T5 v1.0 base, encoder only)
                dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
                     feed_forward_proj="relu", relative_attention_num_buckets=32),
                ("t5-base",)),
}

# Published SD3 / SD3.5 transformers (their diffusers config.json, keys that differ from SD3Transformer2DModel's
# defaults plus the sizes), as `mmflow convert diffusers-sd3-pipeline` converts them: a LoRA recipe's
# train.init_from is matched by the converted folder's name when it is not here.
# name -> (diffusers transformer config, aliases matched against the init_from folder's name)
_SD3_SIZES = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, attention_head_dim=64,
                  joint_attention_dim=4096, pooled_projection_dim=2048)
KNOWN_SD3_TRANSFORMERS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "sd3-medium": (dict(_SD3_SIZES, num_layers=24, num_attention_heads=24, caption_projection_dim=1536,
                        pos_embed_max_size=192, qk_norm=None, dual_attention_layers=()),
                   ("sd3-medium", "sd3m", "stable-diffusion-3-medium", "stable-diffusion-3-medium-diffusers")),
    "sd3.5-medium": (dict(_SD3_SIZES, num_layers=24, num_attention_heads=24, caption_projection_dim=1536,
                          pos_embed_max_size=384, qk_norm="rms_norm", dual_attention_layers=tuple(range(13))),
                     ("sd3.5-medium", "sd35-medium", "sd35m", "stable-diffusion-3.5-medium")),
    "sd3.5-large": (dict(_SD3_SIZES, num_layers=38, num_attention_heads=38, caption_projection_dim=2432,
                         pos_embed_max_size=192, qk_norm="rms_norm", dual_attention_layers=()),
                    ("sd3.5-large", "sd35-large", "sd35l", "stable-diffusion-3.5-large")),
}
SD3_PIPELINE_NAMES = tuple(a for _, aliases in KNOWN_SD3_TRANSFORMERS.values() for a in aliases)  # their VAE: sd3-vae

# name -> (model type, config, aliases matched against the tokenizer folder's name, or for a converted
# pipeline's models/tokenizer, the pipeline folder's)
KNOWN_TOKENIZERS: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {
    "sd3-vae": ("image_vae", dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16),
                ("sd3-vae", "sd35-vae", "sd3.5-vae", "flux-vae", "sd3-medium-vae", *SD3_PIPELINE_NAMES)),
    "sd-vae": ("image_vae", dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                                 use_quant_conv=True), ("sd-vae", "sdxl-vae", "sd15-vae")),
    # mmflow's causal video VAE at CogVideoX's widths (VIDEO_VAE_PRESETS["cogvideox"]): 4x time, 8x space,
    # 16 channels, trained with `mmflow train tokenizers/video.yaml model.preset=cogvideox ...`
    "video-vae-16ch": ("video_vae", dict(block_out_channels=(128, 256, 256, 512), layers_per_block=3, latent_channels=16),
                       ("video-vae-16ch", "video-vae", "cogvideox-vae")),
    # mmflow's CPU-size spectral audio VAE (tokenizers/audio.yaml: 16 kHz mono, hop 320, 16 channels, STFT encoder,
    # ConvNeXt decoder, magnitude + frequency head), what checkpoints/tokenizers/audio ships
    "audio-vae-16k": ("audio_vae", dict(sample_rate=16000, channels=1, strides=(2, 4, 5, 8), latent_channels=16,
                                        encoder_input="stft", frame_blocks=6, frame_channels=256, head="magnitude",
                                        magnitude_subframes=2, magnitude_hidden=1024, magnitude_frequency=True,
                                        griffin_lim_iters=0),
                      ("audio", "audio-vae-16k")),
    # mmflow's waveform VAE at Stable Audio Open's rate and compression: 44.1 kHz stereo, hop 2048 (21.5 latent
    # frames per second), 64 channels; trained with `mmflow train tokenizers/audio.yaml` at these widths
    "audio-vae-44k": ("audio_vae", dict(sample_rate=44100, channels=2, base_channels=128,
                                        block_channels=(128, 256, 512, 1024, 2048), strides=(2, 4, 4, 8, 8),
                                        latent_channels=64), ("audio-vae-44k", "audio-vae", "stable-audio-vae")),
}


def _norm(name: str) -> str:
    return name.lower().replace("_", "-")


def _lookup(table: Mapping[str, tuple], key: str, assumed: str | None, what: str, flag_key: str) -> str:
    """The table entry for `key` (or the `--assume`d name), or UnknownComponent saying what to pass."""
    if assumed is not None:
        if assumed not in table:
            raise UnknownComponent(f"--assume {flag_key}={assumed}: not a known {what}; known: {sorted(table)}")
        return assumed
    for name, entry in table.items():
        if _norm(key) in entry[-1]:
            return name
    raise UnknownComponent(f"{what} {key!r}: its folder is not here and its name matches no known {what}; "
                           f"pass --assume {flag_key}=NAME with NAME one of {sorted(table)}")


def meta_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _transformers_meta(class_name: str, config: Any) -> nn.Module:
    """A transformers model of `config` on the meta device (no memory, no weights read)."""
    import transformers

    with torch.device("meta"):
        cls = getattr(transformers, class_name)
        return cls.from_config(config) if class_name.startswith("Auto") else cls._from_config(config)


@dataclass
class EncoderShape:
    """What the MM-DiT and the memory estimate need of one text encoder. Has the attributes
    TextConditionerConfig's layout reads (key, group, max_length, token_width, pooled_width), so a
    TextConditionerConfig of EncoderShapes gives the combined widths by the real code."""

    key: str
    group: str
    max_length: int
    token_width: int
    pooled_width: int
    parameters: int
    dtype: str
    source: str  # "config.json of <folder>" or "assumed <known name> (<folder> is not here)"

    @property
    def bytes(self) -> int:
        return self.parameters * DTYPES[self.dtype].itemsize


def _pooled_width(pooled: str, kind: str, token_width: int, projection: int | None) -> int:
    """TextEncoderConfig.pooled_width for a model described by a table entry."""
    mode = ("projection" if kind == "clip" else "mean") if pooled == "auto" else pooled
    return 0 if mode == "none" else (projection or token_width) if mode == "projection" else token_width


def encoder_present(entry: Mapping[str, Any]) -> bool:
    """Whether a recipe's text encoder entry names a usable folder (or the default encoder)."""
    try:
        resolve_encoder_path(str(entry.get("path", TextEncoderConfig.path)))
        return True
    except TextEncoderNotFound:
        return False


def encoder_shape(config: TextEncoderConfig, present: bool, assume: Mapping[str, str]) -> EncoderShape:
    """Shape and size of one encoder: from its folder's config.json, or from KNOWN_TEXT_ENCODERS."""
    if present:
        import transformers

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        info = config.info()
        cfg = transformers.AutoConfig.from_pretrained(config.model_path(), local_files_only=True)
        if info.kind == "clip" and cfg.model_type == "clip":  # a whole CLIP folder: only its text tower loads
            cfg = cfg.text_config
        params = meta_parameters(_transformers_meta(info.model_class, cfg))
        return EncoderShape(config.key, config.group, config.max_length, config.token_width, config.pooled_width,
                            params, config.dtype, f"config.json of {config.model_path()}")
    name = _lookup(KNOWN_TEXT_ENCODERS, config.key, assume.get(config.key), "text encoder", config.key)
    class_name, _, kwargs, _ = KNOWN_TEXT_ENCODERS[name]
    kind = "t5" if class_name.startswith("T5") else "clip"
    width = kwargs.get("hidden_size") or kwargs["d_model"]
    return EncoderShape(config.key, config.group, config.max_length, width,
                        _pooled_width(config.pooled, kind, width, kwargs.get("projection_dim")),
                        _known_parameters(name), config.dtype, f"assumed {name} ({config.path} is not here)")


@functools.lru_cache(maxsize=None)
def _known_parameters(name: str) -> int:
    """Parameters of a KNOWN_TEXT_ENCODERS model, counted on the meta device (T5-XXL takes seconds: once)."""
    import transformers

    class_name, config_class, kwargs, _ = KNOWN_TEXT_ENCODERS[name]
    return meta_parameters(_transformers_meta(class_name, getattr(transformers, config_class)(**kwargs)))


@dataclass
class TokenizerShape:
    """A tokenizer (VAE) built on the meta device from its config: latent shapes by a meta probe encode."""

    model: nn.Module
    source: str

    @property
    def parameters(self) -> int:
        return meta_parameters(self.model)

    def latent_shape(self, media_shape: tuple[int, ...]) -> tuple[int, ...]:
        """(C, *axes) of one item's latents: the model's own `latent_shape`, else a probe encode on the meta
        device, else (a model whose encode reads values, e.g. a finiteness check) on a zero-weight CPU copy."""
        if hasattr(self.model, "latent_shape"):
            return tuple(self.model.latent_shape(tuple(media_shape)))
        with torch.no_grad():
            try:
                return tuple(self.model.encode(torch.zeros(1, *media_shape, device="meta")).mean.shape[1:])
            except (RuntimeError, NotImplementedError):
                cpu = copy.deepcopy(self.model).to_empty(device="cpu")
                for t in [*cpu.parameters(), *cpu.buffers()]:
                    t.zero_()
                return tuple(cpu.encode(torch.zeros(1, *media_shape)).mean.shape[1:])


def tokenizer_shape(path: str, assume: Mapping[str, str]) -> TokenizerShape:
    """The recipe's tokenizer folder sized from its config.json, or a KNOWN_TOKENIZERS stand-in."""
    import mmflow.builtin_models  # noqa: F401  (registers every model type a folder may name)
    from mmflow.model_io import build_model

    config = Path(path) / "config.json"
    if config.is_file():
        meta = json.loads(config.read_text())
        model_type, fields, source = meta["model_type"], meta["config"], f"config.json of {path}"
    else:
        folder = Path(path)
        if folder.name == "tokenizer" and folder.parent.name == "models":  # <converted pipeline>/models/tokenizer
            folder = folder.parent.parent
        name = _lookup(KNOWN_TOKENIZERS, folder.name, assume.get("tokenizer"), "tokenizer", "tokenizer")
        model_type, fields, _ = KNOWN_TOKENIZERS[name]
        source = f"assumed {name} ({path} is not here)"
    with torch.device("meta"):
        model = build_model(model_type, dict(fields), source=source)
    return TokenizerShape(model.eval(), source)


def known_velocity(init_from: str) -> tuple[str, Any] | None:
    """(name, MMDiTConfig) of the published SD3 / SD3.5 transformer an absent init_from folder is named after
    (KNOWN_SD3_TRANSFORMERS, as converted), or None."""
    from mmflow.interop.diffusers_sd3 import mmdit_config_from_sd3

    key = _norm(Path(init_from).name)
    for name, (config, aliases) in KNOWN_SD3_TRANSFORMERS.items():
        if key in aliases:
            return name, mmdit_config_from_sd3({"_class_name": "SD3Transformer2DModel", **config})
    return None
