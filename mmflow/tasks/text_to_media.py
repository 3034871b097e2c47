"""Text-to-media flow matching on any folder of images, videos or audio: the framework's general recipe.

Media (mmflow.data.media_folder) go through a frozen tokenizer (a VAE folder, or none: pixel/waveform
space) into latents, captions through the frozen text encoders (mmflow.text), and one MM-DiT learns the
velocity over [latent patches; text tokens]. Video is just more tokens, audio a 1-D sequence of them.

    mmflow prepare recipes/emoji_image.yaml      # optional: cache latents + text embeddings (data-parallel)
    mmflow train recipes/emoji_image.yaml        # reads the cache when it is there and fresh
    mmflow sample runs/emoji_image --prompt "a red heart"

CFG: each encoder drops its caption with its own probability (model.text.encoders[i].dropout, SD3's
per-encoder dropout) and flow.cfg_dropout drops all of them at once; a dropped encoder sees the
empty prompt's encoding (or zeros, model.text.null), which is also u(null) when sampling.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, default_collate

from mmflow.config import ConfigError, check, from_dict, to_dict
from mmflow.data.buckets import make_buckets
from mmflow.data.cache import CachedDataset, CacheOrder, StaleCacheError, cache_problem
from mmflow.data.joint import (FRAMES, SOURCE, ImagesAsClips, JointBatchSampler, JointDataset, JointImagesConfig,
                               collate_padded, collate_sources, image_rows)
from mmflow.data.media_folder import MediaFolderConfig, MediaFolderDataset, collate
from mmflow.evaluation.evaluate import Evaluator
from mmflow.evaluation.media_sets import MediaSet, load_media_set
from mmflow.model_io import CorruptModel, read_json_object
from mmflow.models.mmdit import MMDIT_PRESETS, MMDiT, MMDiTConfig
from mmflow.sampling.generate import seeded_noise
from mmflow.sampling.layout import SampleLayout, WrongOutputRequest, describe_media
from mmflow.tasks import register_task
from mmflow.tasks.encoders import LATENT_MEAN, MediaEncoders
from mmflow.tasks.first_frame import FirstFrame, first_frame_concat, read_first_frames
from mmflow.tasks.flow_task import VELOCITY, FlowMatchingTask
from mmflow.tasks.media_accounting import MediaAccounting
from mmflow.tasks.media_cache import cache_describe
from mmflow.tasks.prior import PriorConfig, make_class_media, prior_row_weights
from mmflow.text.combine import TextConditionerConfig
from mmflow.text.encoder import NON_EMBEDDING_FIELDS, TextEncoderConfig
from mmflow.text.whitening import fit_whitening
from mmflow.train.init_from import source_folder
from mmflow.train.random import BatchRandom
from mmflow.train.task import LossOutput, format_metric

logger = logging.getLogger("mmflow.tasks")

WHITENING_CAPTIONS = 8192  # model.mmdit.text_whitening: captions whose token states are measured (~100k states)


@dataclass
class MediaDataConfig(MediaFolderConfig):
    cache: str | None = field(default=None, metadata={"help": "folder of `mmflow prepare`; null: <run folder>/cache"})
    use_cache: Literal["auto", "require", "off"] = field(
        default="auto", metadata={"help": "auto: read the cache when it is there and fresh, else the raw media"})
    eval_prompts: list[str] = field(default_factory=list, metadata={"help": "validation prompts; empty: 4 captions"})
    eval_per_prompt: int = field(default=2, metadata={"min": 1, "help": "validation samples per prompt"})
    images: JointImagesConfig = field(default_factory=JointImagesConfig, metadata={
        "help": "video: an image folder trained as 1-frame clips in the same batches (mmflow/data/joint.py)"})
    prior: PriorConfig | None = field(default=None, metadata={
        "help": "DreamBooth prior preservation: class items the base model (train.init_from) makes from a class "
                "prompt, mixed into every batch with a loss weight (mmflow/tasks/prior.py); null: none"})

    def validate(self) -> None:
        super().validate()
        check(not (self.bucketing and self.use_cache != "off"), "use_cache",
              "the cache holds one item size; with bucketing set use_cache: off")
        check(not (self.frame_buckets and self.use_cache != "off"), "use_cache",
              "the cache holds one clip length; with frame_buckets set use_cache: off")
        if self.images.path is not None:
            check(self.modality == "video", "images.path",
                  f"joint image+video training is for video recipes; this one is {self.modality}")
        if self.prior is not None:
            check(self.images.path is None, "prior", "prior preservation and joint image+video training "
                                                     "(data.images) cannot be combined; set one of them")
            inst, cls = (os.path.normpath(os.path.abspath(p)) for p in (self.path, self.prior.path))
            check(cls != inst and not cls.startswith(inst + os.sep), "prior.path",
                  f"{self.prior.path} is (inside) data.path {self.path}: the instance reader would take the class "
                  f"items as its own; give the class items a folder of their own")


# model.timing: the MM-DiT's scalar conditions (stable-audio's names), and the longest clip it is asked for
TIMING = ("seconds_start", "seconds_total")
TIMING_MAX_FACTOR = 2.0  # x data.seconds: RoPE carries the window that far (tested); beyond it, refused

# The MM-DiT's size where model.mmdit names no preset (this recipe's defaults from before presets).
DEFAULT_MMDIT_SIZE: dict[str, Any] = {"hidden_size": 256, "depth": 6, "num_heads": 4}
# model.<key> before the MM-DiT's settings moved under model.mmdit (older recipes and pipeline.json)
LEGACY_MMDIT_KEYS = ("hidden_size", "depth", "num_heads", "mlp_ratio", "patch_size", "qk_norm")


@dataclass
class MMDiTSection:
    """model.mmdit: a size preset, then MMDiTConfig fields over it. A field whose default is null keeps the
    preset's value; the task fills in in_channels, context_dim and pooled_dim from the tokenizer and encoders."""

    preset: str | None = field(default=None, metadata={
        "help": "size preset of mmflow.models.mmdit.MMDIT_PRESETS (test, tiny, S, B, L, XL, SD3-2B, SD3.5-8B); "
                "null: hidden_size 256, depth 6, num_heads 4"})
    hidden_size: int | None = field(default=None, metadata={"min": 1, "help": "token width; null: the preset's"})
    depth: int | None = field(default=None, metadata={"min": 1, "help": "joint blocks; null: the preset's"})
    num_heads: int | None = field(default=None, metadata={"min": 1, "help": "must divide hidden_size; null: the preset's"})
    mlp_ratio: float | None = field(default=None, metadata={
        "min": 0.0, "min_exclusive": True, "help": "MLP width / hidden_size; null: the preset's (4.0)"})
    patch_size: tuple[int, ...] = field(default=(2, 2), metadata={
        "min": 1, "help": "one per latent axis: image (h, w), video (t, h, w), audio (l,)"})
    qk_norm: Literal["rms_norm"] | None = field(default="rms_norm", metadata={"help": "null: no q/k normalisation"})
    rope_theta: float | None = field(default=None, metadata={
        "min": 0.0, "min_exclusive": True, "help": "base of the RoPE frequencies; null: 10000"})
    dual_attention_layers: tuple[int, ...] = field(default=(), metadata={
        "min": 0, "help": "blocks with SD3.5's extra latent self-attention"})
    text_positions: int = field(default=0, metadata={
        "min": 0, "help": "learned positions added to the text tokens (0: none, as SD3); at least the text length "
                          "(the encoders' max_length summed); they start at zero, so train.init_from a model "
                          "without them starts unchanged"})
    text_refiner: int = field(default=0, metadata={
        "min": 0, "help": "text-only blocks over the words before the joint blocks (Lumina-Image 2's context refiner; "
                          "0: none, as SD3); they start as the identity, so train.init_from a model without them "
                          "starts unchanged"})
    text_whitening: bool = field(default=False, metadata={
        "help": "whiten the text tokens over the training captions before the context embedder (the statistics are "
                "measured at the run's start and saved with the weights): the word order the encoder's states hold "
                "faintly becomes as strong as the words; a model gaining it by train.init_from starts unchanged"})
    abs_positions: bool = field(default=False, metadata={
        "help": "rope: also add a fixed sinusoidal table of each latent token's position (RoPE alone is relative: "
                "far from both ends a token cannot tell where in the clip it sits); no weights"})
    # SD3's own position table and time input: what converted SD3 / SD3.5 weights (train.init_from) were made with
    pos_embed: Literal["rope", "sincos"] = field(default="rope", metadata={
        "help": "rope: any modality and size; sincos: SD3's fixed 2-D table (images; converted SD3 weights)"})
    pos_embed_max_size: int | None = field(default=None, metadata={
        "min": 1, "help": "sincos: side of the square table in patches (SD3.5-medium 384); null: 96"})
    pos_embed_base_size: int | None = field(default=None, metadata={
        "min": 0, "help": "sincos: positions scaled by base / max (SD3: sample_size / patch = 64); null: 0 = max"})
    time_shift: float | None = field(default=None, metadata={
        "help": "time embedding input s = time_shift + time_scale * t; SD3 weights: 1000; null: 0"})
    time_scale: float | None = field(default=None, metadata={"help": "SD3 weights: -1000 (s = 1000 sigma); null: 1000"})

    def validate(self) -> None:
        rope_only, sincos_only = ["rope_theta"], ["pos_embed_max_size", "pos_embed_base_size"]
        wrong = [k for k in (sincos_only if self.pos_embed == "rope" else rope_only) if getattr(self, k) is not None]
        check(not wrong, wrong[0] if wrong else "pos_embed",
              f"applies to pos_embed {'sincos' if self.pos_embed == 'rope' else 'rope'}; this model uses "
              f"{self.pos_embed}")


def mmdit_fields(section: MMDiTSection, source: str | None = None) -> dict[str, Any]:
    """The MMDiTConfig fields model.mmdit sets: its preset's (or DEFAULT_MMDIT_SIZE), then every field set."""
    if section.preset is None:
        fields = dict(DEFAULT_MMDIT_SIZE)
    elif section.preset in MMDIT_PRESETS:
        fields = dict(MMDIT_PRESETS[section.preset])
    else:
        raise ConfigError(f"{section.preset!r} is not an MM-DiT preset; known: {sorted(MMDIT_PRESETS)}",
                          "model.mmdit.preset", source)
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if f.name != "preset" and (value is not None or f.default is not None):  # null default: the preset's
            fields[f.name] = value
    return fields


def resolve_mmdit(section: MMDiTSection, source: str | None = None, **filled: Any) -> MMDiTConfig:
    """The validated MMDiTConfig of model.mmdit plus what the task fills in; errors name model.mmdit.<key>."""
    fields = {**mmdit_fields(section, source), "null_text": "zeros", **filled}
    try:  # null_text zeros: u(null) comes from the text encoders (empty prompt), not the MM-DiT
        return from_dict(MMDiTConfig, fields, source=source, prefix="model.mmdit")
    except ConfigError as exc:
        if exc.key != "model.mmdit.pos_embed" or section.pos_embed != "rope":
            raise
        # rope refuses the head width: what the recipe can change is hidden_size / num_heads
        raise ConfigError(exc.message, "model.mmdit.num_heads", source) from exc


def mmdit_section(config: MMDiTConfig) -> dict[str, Any]:
    """The model.mmdit section (as a dict) that resolve_mmdit turns back into `config`, given the fields the task
    fills in (in_channels, context_dim, pooled_dim, ...): e.g. a converted SD3 model's, for recipes that train it."""
    section = {f.name: getattr(config, f.name) for f in dataclasses.fields(MMDiTSection) if f.name != "preset"}
    if config.pos_embed == "rope":
        section.update(pos_embed_max_size=None, pos_embed_base_size=None)
    else:
        section["rope_theta"] = None
    return {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}


@dataclass
class MediaModelConfig:
    tokenizer: str | None = field(default=None, metadata={
        "exists": "dir", "help": "tokenizer (VAE) folder; null: pixel/waveform space",
        "exists_hint": "train one with `mmflow train tokenizers/<name>.yaml` or convert one with "
                       "`mmflow convert diffusers-vae`"})
    text: TextConditionerConfig = field(default_factory=TextConditionerConfig)
    mmdit: MMDiTSection = field(default_factory=MMDiTSection)
    first_frame: float = field(default=0.0, metadata={
        "min": 0.0, "max": 1.0, "help": "video: the fraction of training clips given their first frame to continue "
                                        "(image-to-video, mmflow/tasks/first_frame.py); 0: text-to-video only"})
    timing: bool = field(default=False, metadata={
        "help": "audio: stable-audio's timing conditioning (each window's start and its file's length in seconds), "
                "so one model makes clips of any length up to twice data.seconds that end cleanly"})
    # run-time settings of the MMDiT module, not saved into its exported config.json
    attention_backend: Literal["auto", "sdpa", "xformers", "math"] = "auto"
    gradient_checkpointing: bool = False


@register_task
class TextToMediaTask(MediaAccounting, FlowMatchingTask):
    name = "text_to_media"
    supports_reflow = True
    data_config_class = MediaDataConfig
    model_config_class = MediaModelConfig

    def __init__(self, recipe: Any) -> None:
        super().__init__(recipe)
        # tokenizer + text encoders, frozen and loaded on first use: training, `mmflow prepare`, sampling
        self.encoders = MediaEncoders(recipe.model.tokenizer, recipe.model.text)
        self._evaluator: Evaluator | None = None  # built at the first validation that evaluates (recipe eval:)
        self._real: MediaSet | None = None
        self._as_clips = False  # the image part of a joint recipe: its images are read as 1-frame clips
        self._joint = False  # build_dataset made a JointDataset

    def frozen_models(self) -> dict[str, nn.Module]:
        """The text conditioner and the tokenizer (if any), loaded on first call."""
        return self.encoders.modules()

    def media_shape(self) -> tuple[int, ...]:
        return self.recipe.data.spec.media_shape(self.recipe.data)

    def latent_shape(self) -> tuple[int, ...]:
        """(C, *axes) of one item's latents: the media shape through the tokenizer (which must also take every
        duration bucket's clips)."""
        d = self.recipe.data
        for n in d.frame_buckets:
            try:
                self.encoders.latent_shape((3, n, *self.media_shape()[2:]))
            except ValueError as e:
                raise ConfigError(f"{self.recipe.model.tokenizer} cannot take clips of {n} frames: {e}",
                                  "data.frame_buckets") from e
        try:
            return self.encoders.latent_shape(self.media_shape())
        except ValueError as e:  # the tokenizer refuses the recipe's media size (video: frames not 1 + 4k)
            key = "data.frames" if d.modality == "video" else "data"
            raise ConfigError(f"{self.recipe.model.tokenizer} cannot take the recipe's media: {e}", key) from e

    # ------------------------------------------------------------------ models
    def mmdit_config(self) -> MMDiTConfig:
        """model.mmdit with the latent channels and the text widths filled in."""
        c = self.latent_shape()[0]
        return resolve_mmdit(self.recipe.model.mmdit, in_channels=c, concat_channels=c + 1 if self.i2v else 0,
                             context_dim=self.encoders.context_dim, pooled_dim=self.encoders.pooled_dim,
                             scalar_conditions=TIMING if self.recipe.model.timing else (),
                             interval_embed=self.meanflow)

    def start_models(self, models: dict[str, nn.Module], device: torch.device) -> None:
        """model.mmdit.text_whitening: measure the whitening of the training captions' token states (up to
        WHITENING_CAPTIONS of them, drawn with the recipe's seed) unless the model brought its own (init_from)."""
        if self.recipe.train.init_from:
            self._check_init_text(Path(self.recipe.train.init_from))
        velocity = models[VELOCITY]
        if not isinstance(velocity, MMDiT) or not velocity.config.text_whitening:
            return
        if velocity.text_whitening_measured:
            logger.info("text whitening: kept from train.init_from (%d token states)", int(velocity.text_whiten_count))
            return
        entries = [e.text for e in self.raw_dataset().entries if not e.problem]
        order = torch.randperm(len(entries), generator=torch.Generator().manual_seed(self.recipe.seed))
        captions = [entries[i] for i in order[:WHITENING_CAPTIONS].tolist()]
        self.encoders.text.to(device)
        states = []
        with torch.no_grad():
            for i in range(0, len(captions), 256):
                emb = self.encoders.encode_prompts(captions[i:i + 256])
                states.append(emb.tokens[emb.mask].float().cpu())  # (real tokens, D_ctx): padding never reaches it
        whitening = fit_whitening(torch.cat(states))
        # a trained model gaining whitening keeps computing what it did (its context embedder absorbs the change)
        velocity.set_text_whitening(whitening, keep_function=bool(self.recipe.train.init_from))
        logger.info("text whitening: measured on %d token states of %d training captions%s", whitening.count,
                    len(captions), " (the context embedder keeps init_from's function)" if self.recipe.train.init_from
                    else "")

    def _check_init_text(self, path: Path) -> None:
        """Warn when the init_from model learnt on other text tokens than the recipe's encoders give (another
        layer, length, pooling): it would start on inputs it has never seen. A model folder without a pipeline.json
        records none; nothing to compare."""
        try:
            info = read_json_object(source_folder(path) / "pipeline.json")
        except (ConfigError, CorruptModel):  # one model's folder, or a source without (a readable) pipeline.json
            return
        theirs = info.get("recipe", {}).get("model", {}).get("text", {}).get("encoders")
        if not isinstance(theirs, list):
            return
        defaults = {f.name: f.default for f in dataclasses.fields(TextEncoderConfig)}
        ours = self.recipe.model.text.encoders
        diffs = [f"{len(theirs)} encoder(s) there, {len(ours)} here"] if len(theirs) != len(ours) else []
        for i, (t, o) in enumerate(zip(theirs, ours)):
            t = {**defaults, **t}
            diffs += [f"encoders[{i}].{k}: {t[k]!r} there, {v!r} here" for k, v in to_dict(o).items()
                      if k not in NON_EMBEDDING_FIELDS and k in t and t[k] != v]
        if diffs:
            logger.warning("train.init_from %s learnt on other text tokens than model.text gives (%s): it starts on "
                           "inputs it has not seen; set model.text as its pipeline.json says unless the change is "
                           "meant", path, "; ".join(diffs))

    @property
    def run_dir(self) -> Path:
        """The run folder (the Trainer sets the recipe's run_dir to its own): default home of the cache and pairs."""
        return Path(self.recipe.resolved_run_dir())

    @property
    def i2v(self) -> bool:
        """Whether the model continues a given first frame (image-to-video) as well as making clips from text."""
        return self.recipe.model.first_frame > 0

    def build_models(self) -> dict[str, nn.Module]:
        shape, p = self.latent_shape(), self.recipe.model.mmdit.patch_size
        bad = [f"{n} (axis {i})" for i, (n, k) in enumerate(zip(shape[1:], p)) if n % k]
        if bad:
            raise ConfigError(f"{list(p)} does not divide the latent sizes {bad} of latents {list(shape)}",
                              "model.mmdit.patch_size")
        m, config = self.recipe.model, self.mmdit_config()
        if config.pos_embed == "sincos":
            self._check_sincos_fits(config, shape)
        return {VELOCITY: MMDiT(config, attention_backend=m.attention_backend,
                                gradient_checkpointing=m.gradient_checkpointing)}

    def _check_sincos_fits(self, config: MMDiTConfig, shape: tuple[int, ...]) -> None:
        """SD3's table covers pos_embed_max_size patches a side: every item size (bucket) must fit in it."""
        d = self.recipe.data
        sizes = [tuple(shape[1:])]
        if d.bucketing:
            sizes += [tuple(self.encoders.latent_shape((3, h, w))[1:])
                      for h, w in make_buckets(d.size, d.bucket_multiple, d.bucket_min_aspect, d.bucket_max_aspect)]
        longest = max(n // k for size in sizes for n, k in zip(size, config.patch_size))
        if longest > config.pos_embed_max_size:
            raise ConfigError(f"{config.pos_embed_max_size} patches a side is less than the {longest} of the "
                              f"recipe's largest item ({d.size} px{', bucketed' if d.bucketing else ''}): lower "
                              f"data.size", "model.mmdit.pos_embed_max_size")

    @classmethod
    def upgrade_recipe_dict(cls, raw: dict[str, Any], source: str | None) -> dict[str, Any]:
        """model.hidden_size, depth, ... (before model.mmdit existed) moved under model.mmdit, with a warning."""
        model = raw.get("model")
        if not isinstance(model, dict) or not isinstance(model.get("mmdit", {}), dict):
            return raw  # from_dict reports what is wrong with it
        flat = [k for k in LEGACY_MMDIT_KEYS if k in model]
        if not flat:
            return raw
        mmdit = model.get("mmdit") or {}
        both = [k for k in flat if k in mmdit]
        if both:
            raise ConfigError(f"moved to model.mmdit.{both[0]}, which is set too: keep model.mmdit.{both[0]} only",
                              f"model.{both[0]}", source)
        logger.warning("%s: model.%s moved under model.mmdit (read as model.mmdit.%s); please update the recipe",
                       source or "recipe", ", ".join(flat), ", ".join(flat))
        rest = {k: v for k, v in model.items() if k not in flat}
        return {**raw, "model": {**rest, "mmdit": {**mmdit, **{k: model[k] for k in flat}}}}

    @classmethod
    def validate_recipe(cls, recipe: Any, source: str | None) -> None:
        axes, p = recipe.data.spec.latent_axes, recipe.model.mmdit.patch_size
        if len(p) != axes:
            raise ConfigError(f"{list(p)} has {len(p)} entries; {recipe.data.modality} latents have {axes} axes",
                              "model.mmdit.patch_size", source)
        # preset, head width: the MM-DiT's own checks, before any loading (the text width is the encoders', later)
        resolve_mmdit(recipe.model.mmdit, source, context_dim=1)
        positions, tokens = recipe.model.mmdit.text_positions, recipe.model.text.seq_len
        if 0 < positions < tokens:
            raise ConfigError(f"{positions} text positions for {tokens} text tokens (the text encoders' max_length "
                              f"summed over groups): set at least {tokens}", "model.mmdit.text_positions", source)
        joint = recipe.data.prior or (recipe.data.images if recipe.data.images.path is not None else None)
        if joint is not None:
            try:
                image_rows(recipe.train.batch_size, joint.fraction)
            except ValueError as e:
                raise ConfigError(str(e), "train.batch_size", source) from e
        if recipe.data.prior is not None and not recipe.train.init_from:
            raise ConfigError("data.prior's class items are made by the base model and the run fine-tunes it: set "
                              "train.init_from to it (a run, checkpoint or exported model folder)", "train.init_from",
                              source)
        if recipe.model.timing and recipe.data.modality != "audio":
            raise ConfigError(f"timing conditioning is for audio recipes, this one is {recipe.data.modality}",
                              "model.timing", source)
        if recipe.model.first_frame > 0 and recipe.data.modality != "video":
            raise ConfigError(f"{recipe.model.first_frame} asks for image-to-video training; it applies to video "
                              f"recipes, this one is {recipe.data.modality}", "model.first_frame", source)

    # ------------------------------------------------------------------ data
    def cache_dir(self) -> Path:
        return Path(self.recipe.data.cache) if self.recipe.data.cache else self.run_dir / "cache"

    def raw_dataset(self) -> MediaFolderDataset:
        return (ImagesAsClips if self._as_clips else MediaFolderDataset)(self.recipe.data, seed=self.recipe.seed)

    def describe(self, dataset: MediaFolderDataset) -> dict[str, Any]:
        found = cache_describe(self.recipe, dataset, self.encoders)
        return {**found, "as_clips": True} if self._as_clips else found

    def image_part(self) -> TextToMediaTask | None:
        """Joint image+video recipes (data.images): the images as a task of their own that reads them as
        1-frame clips through the same encoders, with its own cache; None for other recipes."""
        d = self.recipe.data
        if d.images.path is None:
            return None
        cache = d.images.cache or f"{self.cache_dir()}-images"
        # read at the clips' size (their batch's bucket when bucketing: JointBatchSampler's size_at)
        data = replace(d, path=d.images.path, modality="image", cache=cache, images=JointImagesConfig(), bucketing=False,
                       frame_buckets=[])
        part = TextToMediaTask(replace(self.recipe, data=data))
        part.encoders, part._as_clips = self.encoders, True
        return part

    def prior_part(self) -> TextToMediaTask | None:
        """Prior preservation (data.prior): the class items as a task of their own, read like the instance
        items (captions: metadata.jsonl's 'text') through the same encoders, with their own cache; None without."""
        d = self.recipe.data
        if d.prior is None:
            return None
        cache = d.prior.cache or f"{self.cache_dir()}-prior"
        data = replace(d, path=d.prior.path, cache=cache, captions="auto", text_field="text", prior=None)
        part = TextToMediaTask(replace(self.recipe, data=data))
        part.encoders = self.encoders
        return part

    def second_part(self) -> tuple[TextToMediaTask, float] | None:
        """The part mixed into every batch after this recipe's own rows, and its share of the rows: a joint
        recipe's images or the class items of prior preservation; None for other recipes."""
        images = self.image_part()
        if images is not None:
            return images, self.recipe.data.images.fraction
        prior = self.prior_part()
        return None if prior is None else (prior, self.recipe.data.prior.fraction)

    def cache_parts(self) -> list[TextToMediaTask]:
        """What `mmflow prepare` caches: this recipe's media, and its images (joint) or class items (prior)."""
        second = self.second_part()
        return [self] if second is None else [self, second[0]]

    def prepare_data(self, device: torch.device) -> None:
        """Prior preservation: the class items the class folder lacks, made by the base model (main process)."""
        if self.recipe.data.prior is not None:
            make_class_media(self.recipe, device)
        super().prepare_data(device)  # reflow pairs

    def _own_dataset(self) -> tuple[Dataset, bool]:
        """(the cache if it is there and fresh, else the raw media; whether it is the cache), by data.use_cache."""
        raw = self.raw_dataset()
        use = self.recipe.data.use_cache
        if use == "off":
            return self.track_dropped(raw), False
        problem = cache_problem(self.cache_dir(), self.describe(raw))
        if problem is None:
            logger.info("reading the cache %s", self.cache_dir())
            return CachedDataset(self.cache_dir()), True
        if use == "require":
            raise StaleCacheError(f"{problem}; data.use_cache is 'require': run `mmflow prepare` with this recipe")
        logger.warning("%s; training from the raw media (run `mmflow prepare` to cache them)", problem)
        return self.track_dropped(raw), False

    def build_dataset(self) -> Dataset:
        if self.recipe.eval.metrics or self.recipe.eval.check:  # before training: an evaluation that cannot run is refused now
            self._prepare_quality(torch.device("cpu"))
        if self.reflow is not None:
            return self.reflow_dataset()
        video, cached = self._own_dataset()
        second = self.second_part()
        if second is None:
            return video
        part = second[0]
        images, images_cached = part._own_dataset()
        if cached != images_cached:  # a batch holds latents or media, not both
            names = ("clips", "images") if part._as_clips else ("instance items", "class items")
            logger.warning("only the %s are cached: training from the raw %s and %s (run `mmflow prepare`)",
                           names[0] if cached else names[1], *names)
            video = self.track_dropped(self.raw_dataset()) if cached else video
            images = part.raw_dataset() if images_cached else images
        self._joint = True
        return self.track_dropped(JointDataset(video, images))

    def collate(self, items: list[Any]) -> Any:
        if self.reflow is not None:
            return default_collate(items)
        if self._joint and self.recipe.data.prior is not None:  # same-sized rows: nothing to pad
            return collate_sources(items, self._collate_same_length)
        if self._joint:
            return collate_padded(items, self._collate_same_length)
        return self._collate_same_length(items)

    @staticmethod
    def _collate_same_length(items: list[Any]) -> Any:
        return collate(items) if "path" in items[0] else default_collate(items)  # raw media items carry a path

    def _sampler(self, dataset: Dataset, local_batch: int, rank: int, world_size: int, start: int) -> Any:
        if isinstance(dataset, MediaFolderDataset):  # (index, epoch) keys: fresh crops each epoch, buckets
            return dataset.batch_sampler(local_batch, rank, world_size, start)
        # the cache is read in the order the raw media would be, so caching changes no training result
        raw = self.raw_dataset()
        return CacheOrder(raw.batch_sampler(local_batch, rank, world_size, start), [int(k) for k in dataset.keys],
                          len(raw))

    def batch_sampler(self, dataset: Dataset, local_batch: int, rank: int, world_size: int, seed: int,
                      start: int) -> Any:
        if self.reflow is not None:
            return None  # the trainer's stream over the pairs
        if not isinstance(dataset, JointDataset):
            return self._sampler(dataset, local_batch, rank, world_size, start)
        part, fraction = self.second_part()  # type: ignore[misc]
        k = image_rows(local_batch, fraction)
        clips = self._sampler(dataset.video, local_batch - k, rank, world_size, start)
        size_at = None
        if isinstance(dataset.video, MediaFolderDataset) and self.recipe.data.bucketing:  # images at each batch's size
            size_at = lambda step: dataset.video.buckets[clips.bucket(step)]  # noqa: E731
        return JointBatchSampler(clips, part._sampler(dataset.images, k, rank, world_size, start),  # type: ignore[union-attr]
                                 size_at, start)

    # ------------------------------------------------------------------ loss
    def loss(self, models: dict[str, nn.Module], batch: Any, rng: BatchRandom, optimizer: str, step: int) -> LossOutput:
        if self.reflow is not None:
            return self.reflow_loss(models, batch, rng)
        # raw or cached batch -> latents and text with per-encoder dropout (the trainer placed the encoders)
        enc = self.encoders.encode_batch(batch, rng)
        keep, mask = {}, None
        frames = self._latent_frames(batch, enc.z)  # (B,) long: joint batches' real latent frames per row
        if frames is not None:
            keep[FRAMES] = frames
            mask = (torch.arange(enc.z.shape[2], device=frames.device) < frames[:, None])[:, None, :, None, None]
        if self.i2v:  # model.first_frame of the clips see their own first latent frame (kept through CFG dropout)
            given = rng.draw(lambda n, g: torch.rand(n, generator=g) < self.recipe.model.first_frame)  # (B,) bool
            if frames is not None:
                given = given & (frames > 1)  # an image's first frame is all of it: nothing left to learn
            keep["concat"] = first_frame_concat(enc.z[:, :, :1], enc.z.shape[2], given)
        if self.recipe.model.timing:  # where each window is and how long its file is: kept through CFG dropout
            if "timing" not in batch:
                raise StaleCacheError(f"model.timing needs each item's timing, which the cache {self.cache_dir()} "
                                      "lacks: run `mmflow prepare` again")
            keep.update(zip(TIMING, batch["timing"].to(enc.z.device, torch.float32).unbind(1)))
        prior = self.recipe.data.prior
        if prior is None or SOURCE not in batch:
            return self.flow_loss(models[VELOCITY], enc.z, enc.text.as_condition(), rng, keep=keep or None, mask=mask)
        is_class = batch[SOURCE].to(enc.z.device) == 1  # (B,) bool: the base model's class items
        out = self.flow_loss(models[VELOCITY], enc.z, enc.text.as_condition(), rng, keep=keep or None, mask=mask,
                             row_weight=prior_row_weights(is_class, prior.weight))
        for name, rows in (("instance_loss", ~is_class), ("prior_loss", is_class)):  # unweighted, for the logs
            if bool(rows.any()):
                out.logs[name] = float(out.per_example[rows].mean())  # type: ignore[index]
        return out

    def _latent_frames(self, batch: Any, z: Tensor) -> Tensor | None:
        """(B,) long latent frames of each row of a joint batch (None for others): cached rows count latent
        frames already, raw ones media frames (through the tokenizer's temporal factor)."""
        if FRAMES not in batch:
            return None
        frames = batch[FRAMES]
        if LATENT_MEAN not in batch and self.encoders.has_tokenizer:
            c, _, *hw = batch["media"].shape[1:]
            to_latent = {n: self.encoders.latent_shape((c, n, *hw))[1] for n in set(frames.tolist())}
            frames = torch.tensor([to_latent[n] for n in frames.tolist()], dtype=torch.long)
        return frames.to(z.device)

    def task_null(self) -> dict[str, Tensor]:
        return self.encoders.null().as_condition()  # on the device the frozen models were placed on

    def null_condition(self, model: nn.Module) -> dict[str, Tensor]:
        # u(null) comes from the text encoders, not the MM-DiT; timing (one row) is the training window's
        null = self.task_null()
        return {**null, **self.layout_condition(self.sample_layout(), 1, next(iter(null.values())).device)}

    def layout_condition(self, layout: SampleLayout, rows: int, device: torch.device) -> dict[str, Tensor]:
        """Condition entries the output size fixes, for both CFG branches: a timing model's seconds_start (0)
        and seconds_total (the asked length), `rows` each; {} for other models."""
        if not self.recipe.model.timing:
            return {}
        seconds = layout.media_shape[-1] / self.recipe.data.sample_rate
        return {"seconds_start": torch.zeros(rows, device=device),
                "seconds_total": torch.full((rows,), seconds, device=device)}

    # ------------------------------------------------------------------ sampling
    def sample_media(self, velocity: nn.Module, prompts: Sequence[str], device: torch.device, sample_cfg: Any,
                     guidance: float | None = None, check_finite: bool = True) -> Tensor:
        """One item per prompt -> media (P, *media_shape) on CPU, clamped to [-1, 1]; noise from sample_cfg.seed."""
        self.place_frozen_models(device)  # sampling outside the trainer (`mmflow sample --device`)
        x0, g = seeded_noise((len(prompts), *self.latent_shape()), sample_cfg.seed)
        cond = self.encoders.encode_prompts(prompts).as_condition()
        cond.update(self.layout_condition(self.sample_layout(), len(prompts), x0.device))
        # like_shape: a tokenizer that pads on encode (video frames, audio samples) crops back to the data's
        decode = partial(self.encoders.decode, like_shape=(1, *self.media_shape())) if self.encoders.has_tokenizer else None
        return self.sample(velocity, x0.to(device), cond, sample_cfg, guidance=guidance, generator=g, decode=decode,
                           clamp=True, check_finite=check_finite).x

    def eval_prompts(self) -> list[str]:
        d = self.recipe.data
        if d.eval_prompts:
            return list(d.eval_prompts)
        from mmflow.data.captions import load_captions

        texts = [e.text for e in load_captions(d.path, d.media_extensions, d.captions, d.text_field).entries if e.text]
        return texts[:: max(1, len(texts) // 4)][:4] or [""]

    def validate(self, models: dict[str, nn.Module], out_dir: Path, step: int, device: torch.device) -> dict[str, float]:
        prompts = [p for p in self.eval_prompts() for _ in range(self.recipe.data.eval_per_prompt)]
        # check_finite off: a diverged model's metrics are reported unknown (null), the run goes on
        media = self.sample_media(models[VELOCITY], prompts, device, self.recipe.sample, check_finite=False)
        write_samples(media, prompts, self.recipe.data, out_dir, per_prompt=self.recipe.data.eval_per_prompt)
        metrics = {"sample_std": float(media.std()), "sample_mean": float(media.mean())}
        if self.recipe.eval.stability_rows:  # the seeds' small-noise check: how far outputs move per unit of noise
            metrics.update(self.stability(models[VELOCITY], device, rows=self.recipe.eval.stability_rows))
        if self.recipe.eval.metrics or self.recipe.eval.check:
            metrics.update(self.quality(models[VELOCITY], device))
        return metrics

    def summary_lines(self, metrics: dict[str, float | None], run_dir: Path) -> list[str]:
        """The final validation's prompt check as a table (one attribute a line, the fraction of samples that
        show it) and its other eval_ metrics on one line; then the bad-media lines."""
        cfg, s = self.recipe.eval, self.recipe.sample
        lines = []
        prefix = f"eval_{cfg.check}_"
        checked = {k: v for k, v in metrics.items() if cfg.check and k.startswith(prefix)}
        if checked:
            source = "eval.prompts" if cfg.prompts else f"the prompts of {cfg.real or self.recipe.data.path}"
            lines.append(f"prompt check '{cfg.check}': {cfg.num_samples} samples of {source} "
                         f"(guidance {s.guidance:g}, {s.solver} x {s.steps}); fraction right:")
            lines += [f"  {k[len(prefix):]:<14}{format_metric(v, '.3f')}" for k, v in checked.items()]
        other = {k: v for k, v in metrics.items() if k.startswith("eval_") and k not in checked}
        if other:
            lines.append("quality: " + ", ".join(f"{k[5:]} {format_metric(v, '.4g')}" for k, v in sorted(other.items())))
        return lines + super().summary_lines(metrics, run_dir)

    def _prepare_quality(self, device: torch.device) -> None:
        """The evaluator and the real set of the recipe's eval: section, checked for size (once)."""
        if self._evaluator is None:
            cfg, d = self.recipe.eval, self.recipe.data
            self._real = load_media_set(cfg.real or d.path, d.modality)
            self._evaluator = Evaluator(cfg, d.modality, cache_dir=self.run_dir / "eval_cache", device=device)
            self._evaluator.check_counts(len(self._real), cfg.num_samples)
        self._evaluator.to(device)

    def quality(self, velocity: nn.Module, device: torch.device) -> dict[str, float]:
        """The recipe's `eval:` metrics on eval.num_samples fresh samples against the real folder (eval.real,
        default the training data), as eval_<metric>; prompts cycle through eval.prompts or the real captions.
        The same seeds at every validation, so the numbers move only with the model."""
        cfg, d = self.recipe.eval, self.recipe.data
        self._prepare_quality(device)
        prompts = list(cfg.prompts) or [c for c in self._real.captions if c] or [""]
        rows = [prompts[i % len(prompts)] for i in range(cfg.num_samples)]
        media = torch.cat([self.sample_media(velocity, rows[lo: lo + cfg.batch_size], device,
                                             replace(self.recipe.sample, seed=self.recipe.sample.seed + lo),
                                             check_finite=False)
                           for lo in range(0, len(rows), cfg.batch_size)])
        if not bool(torch.isfinite(media).all()):  # a diverged model: its quality is unknown (null)
            return {f"eval_{m}": float("nan") for m in cfg.metrics}  # (a check's keys are reported once it runs)
        report = self._evaluator.score_media(media, rows, self._real, d.sample_rate)
        return {f"eval_{k}": v for k, v in report.metrics.items()}

    def pipeline_info(self) -> dict[str, Any]:
        # the prompts `mmflow sample` uses when given none, kept here: the captions may not travel with the model
        return {"task": self.name, "model": VELOCITY, "default_inputs": self.eval_prompts()}

    def export_frozen(self, models_dir: Path) -> dict[str, Any]:
        """The tokenizer and text encoders into the exported folder (see MediaEncoders.export)."""
        return self.encoders.export(models_dir)

    @classmethod
    def resolve_exported(cls, recipe: dict, components: dict, folder: Path,
                         text_encoders: Mapping[str, str] | None = None) -> dict:
        """The recipe pointed at the exported folder's components (see MediaEncoders.resolve_exported)."""
        return MediaEncoders.resolve_exported(recipe, components, folder, text_encoders)

    # ------------------------------------------------------------------ sampling (FlowPipeline)
    input_kind = "text"

    def sample_layout(self, size: Any = None, num_frames: int | None = None, seconds: float | None = None) -> SampleLayout:
        """The training media size, or the one asked where the modality allows (image: size; video: size,
        num_frames; audio: seconds) and the latents still divide into patches; a timing model (model.timing)
        samples its window, or longer, and crops to the seconds asked (`_timing_layout`)."""
        d = self.recipe.data
        if self.recipe.model.timing and seconds is not None and size is None and num_frames is None:
            return self._timing_layout(seconds)
        spec = d.spec
        changes = {}
        for key, value in (("size", size), ("num_frames", num_frames), ("seconds", seconds)):
            if value is None:
                continue
            if key not in spec.sample_options:
                what = describe_media(d.modality, self.media_shape(), d.sample_rate)
                can = ", ".join(spec.sample_options)
                raise WrongOutputRequest(f"{key} does not apply: this model makes {what} (it can be asked for {can})")
            changes[spec.sample_options[key]] = value
        data = replace(d, **changes) if changes else d
        media_shape = spec.media_shape(data)
        try:
            x_shape = self.encoders.latent_shape(media_shape)
        except ValueError as e:  # the tokenizer refuses the size (video: frames not 1 + k * temporal factor)
            asked = ", ".join(f"{k}={v}" for k, v in (("size", size), ("num_frames", num_frames), ("seconds", seconds))
                              if v is not None) or "the training size"
            raise WrongOutputRequest(f"{asked}: this model's tokenizer cannot take it: {e}") from e
        patch = self.mmdit_config().patch_size
        if changes and any(n % p for n, p in zip(x_shape[1:], patch)):
            per_latent = [m // n for m, n in zip(media_shape[1:], x_shape[1:])]  # media samples per latent, per axis
            raise WrongOutputRequest(
                f"{', '.join(f'{k}={v}' for k, v in changes.items())} gives {describe_media(d.modality, media_shape, data.sample_rate)} "
                f"with latents {list(x_shape)}, which patches {list(patch)} do not divide; each axis must be a multiple "
                f"of {[a * p for a, p in zip(per_latent, patch)]} media samples")
        decode = partial(self.encoders.decode, like_shape=(1, *media_shape)) if self.encoders.has_tokenizer else None
        return SampleLayout(x_shape, media_shape, d.modality, decode, fps=data.fps, sample_rate=data.sample_rate)

    def _timing_layout(self, seconds: float) -> SampleLayout:
        """A timing model's clip of `seconds` (in (0, TIMING_MAX_FACTOR x data.seconds]): the training window's
        latents, or more for longer clips (a multiple of the patch: RoPE), told seconds_total = `seconds`
        (layout_condition) and cropped to it; a length between two samples is rounded with a note."""
        d = self.recipe.data
        longest = TIMING_MAX_FACTOR * d.seconds
        if not 0 < seconds <= longest:
            raise WrongOutputRequest(f"seconds={seconds:g}: this model makes clips longer than 0 s and up to "
                                     f"{longest:g} s (its {d.seconds:g} s window with timing conditioning, and "
                                     f"up to {TIMING_MAX_FACTOR:g}x longer through RoPE)")
        n = round(seconds * d.sample_rate)
        if abs(n - seconds * d.sample_rate) > 1e-6:
            logger.warning("seconds=%g is not a whole number of samples at %d Hz: rounded to %d samples (%.6g s)",
                           seconds, d.sample_rate, n, n / d.sample_rate)
        window = self.sample_layout()
        x_shape = window.x_shape
        per_latent = window.media_shape[-1] // window.x_shape[-1]  # samples per latent frame (the hop)
        if n > window.media_shape[-1]:  # longer than the window: more latent frames, a multiple of the patch
            p = self.recipe.model.mmdit.patch_size[0]
            x_shape = (*window.x_shape[:-1], math.ceil(n / (per_latent * p)) * p)
        media_shape = (*window.media_shape[:-1], n)
        decoded = (1, *window.media_shape[:-1], x_shape[-1] * per_latent)  # all the latents decode to

        def decode(z: Tensor) -> Tensor:  # the sampled latents whole, then the clip asked for
            media = self.encoders.decode(z, like_shape=decoded) if self.encoders.has_tokenizer else z
            return media[..., :n]  # (B, C, n)

        return SampleLayout(x_shape, media_shape, d.modality, decode, sample_rate=d.sample_rate)

    def default_inputs(self) -> list[Any]:
        return self.eval_prompts()

    def prepare_inputs(self, rows: Sequence[Any], seeds: Sequence[int]) -> tuple[list[Any], list[str]]:
        return list(rows), self.encoders.text.truncation_warnings(sorted(set(rows)))

    def input_condition(self, velocity: nn.Module, rows: Sequence[Any], device: torch.device) -> dict[str, Tensor]:
        return self.encoders.encode_prompts(list(rows)).as_condition()  # on the device the encoders were placed on

    def reflow_mismatch(self, teacher: FlowMatchingTask) -> str | None:
        """The pairs are latents: the teacher's tokenizer must be this recipe's (same weights), and their shape."""
        if not isinstance(teacher, TextToMediaTask):
            return f"it is a {teacher.name} model, not text-to-media"
        if teacher.encoders.describe()["tokenizer"] != self.encoders.describe()["tokenizer"]:
            return "its tokenizer (VAE) is not this recipe's model.tokenizer (other weights)"
        return super().reflow_mismatch(teacher)

    def reflow_inputs(self, n: int) -> list[Any]:
        """n captions spread evenly over the training items in file order (the pair's seed varies the rest):
        a folder that lists one kind of caption first (one-object, then two-object) gives pairs of every kind
        even when n is below the item count."""
        captions = [e.text for e in self.raw_dataset().entries if e.problem is None]
        if not captions:
            raise ConfigError(f"{self.recipe.data.path} holds no usable captioned items to make reflow pairs for",
                              "data.path")
        return [captions[(2 * i + 1) * len(captions) // (2 * n)] for i in range(n)]  # each pick centred in its share

    def negative_condition(self, velocity: nn.Module, prompt: str, device: torch.device) -> dict[str, Tensor]:
        return self.input_condition(velocity, [prompt], device)

    def first_frame_condition(self, images: Sequence[FirstFrame], layout: SampleLayout) -> tuple[Tensor, Tensor]:
        """Image-to-video: first frames (files or (3, H, W) tensors) -> (cond["concat"] (n, C + 1, *x_shape[1:]),
        their latents z0 (n, C, 1, h, w)) on the encoders' device; images of another size are resized with a warning."""
        if layout.modality != "video":
            raise WrongOutputRequest(f"a first frame (--image) is for video models; this one makes {layout.describe()}")
        if not self.i2v:
            raise WrongOutputRequest("this video model was trained from text only (model.first_frame: 0), so it "
                                     "cannot continue a given first frame: train with model.first_frame > 0")
        frames = read_first_frames(images, tuple(layout.media_shape[2:]))  # (n, 3, H, W)
        z0 = self.encoders.encode(frames.unsqueeze(2))  # (n, C, 1, h, w): the causal VAE encodes frame 0 alone
        return first_frame_concat(z0, layout.x_shape[1]), z0


def write_samples(media: Tensor, prompts: Sequence[str], data: MediaFolderConfig, out_dir: Path,
                  per_prompt: int) -> list[Path]:
    """Samples (P, C, ...) to files: samples.png, the modality's preview with one row per prompt (its
    per_prompt samples side by side), then, for media a picture cannot show whole (video, audio), one
    sample_NNN file each; prompts.txt lists the samples' prompts."""
    spec = data.spec
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = media.view(len(prompts) // per_prompt, per_prompt, *media.shape[1:])  # (rows, per_prompt, C, ...)
    files = [spec.preview(grid, out_dir / "samples.png", labels=[p[:24] for p in prompts[::per_prompt]])]
    if spec.item_files:
        files += [spec.write(item, out_dir / f"sample_{i:03d}{spec.suffix}", fps=data.fps, sample_rate=data.sample_rate)
                  for i, item in enumerate(media)]
    (out_dir / "prompts.txt").write_text("".join(f"{i}\t{p}\n" for i, p in enumerate(prompts)))
    return files
