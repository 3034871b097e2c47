"""A whole diffusers StableDiffusion3Pipeline folder (SD3 / SD3.5) -> a self-contained mmflow pipeline folder.

The output is what `FlowPipeline.save_pretrained` writes (pipeline.json + models/): the transformer as
models/velocity (mmflow/interop/diffusers_sd3.py), the VAE as models/tokenizer with scaling_factor /
shift_factor as its latent statistics (diffusers_vae.py), and the three text encoders with their
tokenizers copied to models/text_encoders/{clip_l, clip_g, t5}/. Its recipe (task text_to_media)
reproduces StableDiffusion3Pipeline:

- text: CLIP-L and CLIP-G penultimate hidden states channel-concatenated and zero-padded to the
  transformer's joint_attention_dim, then T5's tokens along the sequence (77 + 77 / max_sequence_length);
  pooled = both CLIP projections. SD3 runs every encoder without an attention mask and its transformer
  attends to the padding, so the encoders are set `attention_mask: false`.
- CFG: the null condition is every encoder's encoding of "" (null_mode empty), SD3's default negative
  prompt; guidance 7.0 and 28 steps are StableDiffusion3Pipeline's call defaults.
- time: the scheduler's FlowMatchEulerDiscreteScheduler (static shift) becomes the Euler solver on the
  "sd3" grid (mmflow/sampling/grids.py), the same sigmas in mmflow's t = 1 - sigma.

    src, dst = Path("weights/stable-diffusion-3.5-medium"), Path("models/sd35m")   # local folders
    convert_diffusers_sd3_pipeline(src, dst)
    pipe = FlowPipeline.from_pretrained(dst)
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from mmflow.config import ConfigError, to_dict
from mmflow.errors import MissingInput
from mmflow.interop.diffusers_common import read_config, resolve_config
from mmflow.interop.diffusers_sd3 import load_diffusers_sd3, mmdit_config_from_sd3
from mmflow.interop.diffusers_vae import image_vae_config_from_diffusers, load_diffusers_vae
from mmflow.model_io import DEFAULT_MAX_SHARD_BYTES, read_json_object, save_model
from mmflow.models.mmdit import MMDiTConfig
from mmflow.sampling.config import SampleConfig
from mmflow.sampling.grids import SD3_TRAIN_STEPS
from mmflow.tasks.encoders import MediaEncoders
from mmflow.tasks.text_to_media import mmdit_section
from mmflow.text.combine import TextConditionerConfig
from mmflow.text.encoder import TextEncoderConfig
from mmflow.utils.fs import atomic_folder, write_json_atomic

__all__ = ["SD3_COMPONENTS", "read_sd3_pipeline", "sample_config_from_scheduler", "sd3_text_config",
           "convert_diffusers_sd3_pipeline"]

PIPELINE_CLASS = "StableDiffusion3Pipeline"
MODEL_INDEX = "model_index.json"
# component -> the class model_index.json must name (None: any class, e.g. CLIPTokenizer or its fast twin)
SD3_COMPONENTS: dict[str, str | None] = {
    "transformer": "SD3Transformer2DModel", "vae": "AutoencoderKL", "scheduler": "FlowMatchEulerDiscreteScheduler",
    "text_encoder": "CLIPTextModelWithProjection", "text_encoder_2": "CLIPTextModelWithProjection",
    "text_encoder_3": "T5EncoderModel", "tokenizer": None, "tokenizer_2": None, "tokenizer_3": None,
}
# the text encoders under their mmflow names: (name, model component, tokenizer component)
ENCODERS = (("clip_l", "text_encoder", "tokenizer"), ("clip_g", "text_encoder_2", "tokenizer_2"),
            ("t5", "text_encoder_3", "tokenizer_3"))
CLIP_LENGTH = 77  # CLIP's context, diffusers' tokenizer_max_length when the tokenizer does not say
T5_LENGTH = 256  # StableDiffusion3Pipeline's max_sequence_length default
GUIDANCE, STEPS = 7.0, 28  # StableDiffusion3Pipeline.__call__ defaults
DEFAULT_PROMPTS = ["a photo of a red fox sitting in fresh snow", "a watercolour painting of a harbour town"]
SCHEDULER_CLASS = SD3_COMPONENTS["scheduler"]

# FlowMatchEulerDiscreteScheduler.__init__ defaults (diffusers fills keys absent from the json with these)
_SCHEDULER_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False, "base_shift": 0.5, "max_shift": 1.15,
    "base_image_seq_len": 256, "max_image_seq_len": 4096, "invert_sigmas": False, "shift_terminal": None,
    "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
    "time_shift_type": "exponential", "stochastic_sampling": False,
}
# settings that change the sigmas (or add noise) in ways the sd3 grid does not express: (key, SD3's value)
_UNSUPPORTED = (("use_dynamic_shifting", False), ("invert_sigmas", False), ("shift_terminal", None),
                ("use_karras_sigmas", False), ("use_exponential_sigmas", False), ("use_beta_sigmas", False),
                ("stochastic_sampling", False), ("num_train_timesteps", SD3_TRAIN_STEPS))


def read_sd3_pipeline(folder: str | os.PathLike) -> dict[str, Path]:
    """{component: its folder} of a diffusers StableDiffusion3Pipeline folder, after checking model_index.json.

    Raises MissingInput naming model_index.json, or every component that is absent, null or has no folder,
    and ValueError for another pipeline class or a component of an unexpected class.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingInput(f"{folder} is not a folder; expected a diffusers {PIPELINE_CLASS} folder")
    if not (folder / MODEL_INDEX).is_file():
        raise MissingInput(f"{folder}: no {MODEL_INDEX}; expected a diffusers {PIPELINE_CLASS} folder "
                           f"(model_index.json, {', '.join(f'{c}/' for c in SD3_COMPONENTS)})")
    index = read_json_object(folder / MODEL_INDEX)
    cls = index.get("_class_name")
    if cls != PIPELINE_CLASS:
        raise ValueError(f"{folder / MODEL_INDEX}: _class_name {cls!r}, expected {PIPELINE_CLASS!r}")
    missing, wrong = [], []
    for name, expected in SD3_COMPONENTS.items():
        entry = index.get(name)
        found = entry[1] if isinstance(entry, list) and len(entry) == 2 else None
        if found is None:
            state = "null" if name in index else "absent"
            missing.append(f"{name} ({expected or 'tokenizer'}: {state} in {MODEL_INDEX})")
        elif expected is not None and found != expected:
            wrong.append(f"{name} is a {found}, expected {expected}")
        elif not (folder / name).is_dir():
            missing.append(f"{name}/ (the folder is missing)")
    if missing:
        raise MissingInput(f"{folder}: the {PIPELINE_CLASS} lacks {'; '.join(missing)}; the conversion needs every "
                           "component (all three text encoders and their tokenizers)")
    if wrong:
        raise ValueError(f"{folder / MODEL_INDEX}: {'; '.join(wrong)}")
    return {name: folder / name for name in SD3_COMPONENTS}


def sample_config_from_scheduler(scheduler_config: dict[str, Any], steps: int = STEPS,
                                 guidance: float = GUIDANCE) -> SampleConfig:
    """The sampler equal to a FlowMatchEulerDiscreteScheduler config (its scheduler_config.json as a dict):
    Euler on the sd3 grid with its shift. Raises ValueError naming a setting the grid cannot express."""
    c = resolve_config(scheduler_config, SCHEDULER_CLASS, _SCHEDULER_DEFAULTS)
    bad = [f"{k}={c[k]!r} (supported: {v!r})" for k, v in _UNSUPPORTED if c[k] != v]
    if bad:
        raise ValueError(f"unsupported {SCHEDULER_CLASS} settings {bad}; SD3 / SD3.5 pipelines use a static shift")
    config = SampleConfig(solver="euler", steps=steps, grid="sd3", shift=float(c["shift"]), guidance=guidance,
                          num_samples=1)
    config.validate()
    return config


def _clip_length(tokenizer: Path) -> int:
    """The CLIP tokenizer's model_max_length (what StableDiffusion3Pipeline pads CLIP prompts to), else 77."""
    path = tokenizer / "tokenizer_config.json"
    length = read_json_object(path).get("model_max_length") if path.is_file() else None
    return int(length) if isinstance(length, (int, float)) and 0 < length <= 10 * CLIP_LENGTH else CLIP_LENGTH


def sd3_text_config(parts: dict[str, Path], dtype: str = "float32",
                    max_sequence_length: int = T5_LENGTH) -> TextConditionerConfig:
    """The text conditioner StableDiffusion3Pipeline.encode_prompt computes, over the pipeline's folders
    (`read_sd3_pipeline`); its width (T5's, the widest group) is the transformer's joint_attention_dim. Raises
    ConfigError naming encoders[i].<key> for an encoder that does not fit (a wrong kind, a prompt length
    beyond its positions)."""
    clip = dict(kind="clip", group="clip", layer="penultimate", max_length=_clip_length(parts["tokenizer"]),
                pooled="projection")
    t5 = dict(kind="t5", pooled="none", max_length=max_sequence_length)
    encoders = [TextEncoderConfig(path=str(parts[model]), tokenizer=str(parts[tok]), name=name, attention_mask=False,
                                  dtype=dtype, export="copy", **(t5 if name == "t5" else clip))
                for name, model, tok in ENCODERS]
    config = TextConditionerConfig(encoders=encoders, null_mode="empty")
    config.validate()
    return config


def _check_fit(mmdit: MMDiTConfig, text: TextConditionerConfig, vae_channels: int) -> None:
    """The components' widths agree as StableDiffusion3Pipeline needs them to (ValueError naming them)."""
    clip_l, clip_g, t5 = text.encoders
    problems = []
    if mmdit.in_channels != vae_channels:
        problems.append(f"transformer in_channels {mmdit.in_channels} != vae latent_channels {vae_channels}")
    if clip_l.token_width + clip_g.token_width > t5.token_width:
        problems.append(f"text_encoder + text_encoder_2 hidden sizes {clip_l.token_width} + {clip_g.token_width} "
                        f"exceed text_encoder_3's d_model {t5.token_width} (SD3 zero-pads the CLIP tokens to it)")
    if t5.token_width != mmdit.context_dim:
        problems.append(f"text_encoder_3 d_model {t5.token_width} != transformer joint_attention_dim "
                        f"{mmdit.context_dim}")
    if text.pooled_width != mmdit.pooled_dim:
        problems.append(f"text_encoder + text_encoder_2 projection_dim {clip_l.pooled_width} + {clip_g.pooled_width} "
                        f"!= transformer pooled_projection_dim {mmdit.pooled_dim}")
    if problems:
        raise ValueError("the pipeline's components do not fit together: " + "; ".join(problems))


def _recipe(name: str, mmdit: MMDiTConfig, text: TextConditionerConfig, tokenizer: Path, size: int,
            sample: SampleConfig) -> dict[str, Any]:
    """The text_to_media recipe of the converted pipeline. Sampling reads its text, tokenizer and sample
    sections and loads the velocity model from models/velocity; model.mmdit describes that model exactly
    (SD3's sin-cos positions and time input), so a recipe that copies it trains from these weights
    (train.init_from: the converted folder)."""
    return {"name": name, "task": "text_to_media", "seed": 0,
            "data": {"path": "data/images", "modality": "image", "size": size, "eval_prompts": DEFAULT_PROMPTS},
            "model": {"tokenizer": str(tokenizer), "text": to_dict(text), "mmdit": mmdit_section(mmdit)},
            "flow": {"schedule": "condot"}, "sample": to_dict(sample)}


def _run_name(src: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", src.resolve().name).lstrip("._-")
    return name or "sd3"


def convert_diffusers_sd3_pipeline(src: str | os.PathLike, dst: str | os.PathLike, dtype: torch.dtype | None = None,
                                   max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                                   max_sequence_length: int = T5_LENGTH) -> Path:
    """Convert a diffusers StableDiffusion3Pipeline folder into an mmflow pipeline folder at dst (atomically).

    dtype: the transformer's and VAE's stored weights and the text encoders' compute dtype (None: the
    checkpoint's weights, text encoders in float32). max_sequence_length: T5 tokens per prompt. Refuses an
    existing dst; every check (classes, configs, widths) runs before any weights are read.
    """
    src, dst = Path(src), Path(dst)
    if dst.exists():
        raise ConfigError(f"{dst} already exists; choose a new output folder (the conversion never overwrites)")
    parts = read_sd3_pipeline(src)
    transformer_config, vae_config = read_config(parts["transformer"]), read_config(parts["vae"])
    mmdit = mmdit_config_from_sd3(transformer_config)
    vae = image_vae_config_from_diffusers(vae_config)
    sample = sample_config_from_scheduler(read_json_object(parts["scheduler"] / "scheduler_config.json"))
    encoder_dtype = "float32" if dtype is None else str(dtype).removeprefix("torch.")
    try:
        text = sd3_text_config(parts, encoder_dtype, max_sequence_length)
    except ConfigError as e:  # say what the recipe-style key belongs to
        raise ConfigError(f"its text encoders do not fit SD3's text conditioning: {e}", source=str(src)) from e
    _check_fit(mmdit, text, vae.latent_channels)
    text = replace(text, width=mmdit.context_dim)  # = T5's width, written out in the recipe
    vae_factor = 2 ** (len(vae.block_out_channels) - 1)
    size = int(transformer_config.get("sample_size", 128)) * vae_factor  # StableDiffusion3Pipeline's default height

    with atomic_folder(dst, overwrite=False) as out:
        models = out / "models"
        save_model(load_diffusers_sd3(parts["transformer"], dtype=dtype), models / "velocity",
                   max_shard_bytes=max_shard_bytes)
        save_model(load_diffusers_vae(parts["vae"], dtype=dtype), models / "tokenizer", max_shard_bytes=max_shard_bytes)
        components = MediaEncoders(str(models / "tokenizer"), text).export(models)
        recipe = _recipe(_run_name(src), mmdit, text, dst / "models" / "tokenizer", size, sample)
        write_json_atomic(out / "pipeline.json", {
            "task": "text_to_media", "model": "velocity", "default_inputs": DEFAULT_PROMPTS,
            "converted_from": {"format": "diffusers-sd3-pipeline", "path": str(src)},
            "recipe": recipe, "components": components})
    return dst
