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

import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, default_collate

from mmflow.config import ConfigError, check
from mmflow.data.cache import CachedDataset, CacheOrder, cache_problem
from mmflow.data.media_folder import MediaFolderConfig, MediaFolderDataset, collate
from mmflow.models.mmdit import MMDiT, MMDiTConfig
from mmflow.sampling.generate import seeded_noise
from mmflow.tasks import register_task
from mmflow.tasks.encoders import MediaEncoders
from mmflow.tasks.flow_task import VELOCITY, FlowMatchingTask
from mmflow.tasks.media_accounting import MediaAccounting
from mmflow.tasks.media_cache import cache_describe
from mmflow.text.combine import TextConditionerConfig
from mmflow.train.random import BatchRandom
from mmflow.train.task import LossOutput

logger = logging.getLogger("mmflow.tasks")

@dataclass
class MediaDataConfig(MediaFolderConfig):
    cache: str | None = field(default=None, metadata={"help": "folder of `mmflow prepare`; null: <run folder>/cache"})
    use_cache: Literal["auto", "require", "off"] = field(
        default="auto", metadata={"help": "auto: read the cache when it is there and fresh, else the raw media"})
    eval_prompts: list[str] = field(default_factory=list, metadata={"help": "validation prompts; empty: 4 captions"})
    eval_per_prompt: int = field(default=2, metadata={"min": 1, "help": "validation samples per prompt"})

    def validate(self) -> None:
        super().validate()
        check(not (self.bucketing and self.use_cache != "off"), "use_cache",
              "the cache holds one item size; with bucketing set use_cache: off")


@dataclass
class MediaModelConfig:
    tokenizer: str | None = field(default=None, metadata={
        "exists": "dir", "help": "tokenizer (VAE) folder; null: pixel/waveform space",
        "exists_hint": "train one with `mmflow train tokenizers/<name>.yaml` or convert one with "
                       "`mmflow convert diffusers-vae`"})
    text: TextConditionerConfig = field(default_factory=TextConditionerConfig)
    hidden_size: int = field(default=256, metadata={"min": 1, "help": "MM-DiT token width"})
    depth: int = field(default=6, metadata={"min": 1})
    num_heads: int = field(default=4, metadata={"min": 1})
    mlp_ratio: float = field(default=4.0, metadata={"min": 0.0, "min_exclusive": True})
    patch_size: tuple[int, ...] = field(default=(2, 2), metadata={
        "min": 1, "help": "one per latent axis: image (h, w), video (t, h, w), audio (l,)"})
    qk_norm: Literal["rms_norm"] | None = "rms_norm"
    attention_backend: Literal["auto", "sdpa", "xformers", "math"] = "auto"
    gradient_checkpointing: bool = False


@register_task
class TextToMediaTask(MediaAccounting, FlowMatchingTask):
    name = "text_to_media"
    data_config_class = MediaDataConfig
    model_config_class = MediaModelConfig

    def __init__(self, recipe: Any) -> None:
        super().__init__(recipe)
        # tokenizer + text encoders, frozen and loaded on first use: training, `mmflow prepare`, sampling
        self.encoders = MediaEncoders(recipe.model.tokenizer, recipe.model.text)
        self.run_dir: Path = Path(recipe.resolved_run_dir())

    def frozen_models(self) -> dict[str, nn.Module]:
        """The text conditioner and the tokenizer (if any), loaded on first call."""
        return self.encoders.modules()

    def media_shape(self) -> tuple[int, ...]:
        return self.recipe.data.spec.media_shape(self.recipe.data)

    def latent_shape(self) -> tuple[int, ...]:
        """(C, *axes) of one item's latents: the media shape through the tokenizer."""
        return self.encoders.latent_shape(self.media_shape())

    # ------------------------------------------------------------------ models
    def mmdit_config(self) -> MMDiTConfig:
        m = self.recipe.model
        return MMDiTConfig(in_channels=self.latent_shape()[0], patch_size=tuple(m.patch_size), hidden_size=m.hidden_size,
                           depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio, qk_norm=m.qk_norm,
                           context_dim=self.encoders.context_dim, pooled_dim=self.encoders.pooled_dim, pos_embed="rope",
                           null_text="zeros")  # u(null) comes from the text encoders (empty prompt), not the MM-DiT

    def build_models(self) -> dict[str, nn.Module]:
        shape, p = self.latent_shape(), self.recipe.model.patch_size
        bad = [f"{n} (axis {i})" for i, (n, k) in enumerate(zip(shape[1:], p)) if n % k]
        if bad:
            raise ConfigError(f"{list(p)} does not divide the latent sizes {bad} of latents {list(shape)}",
                              "model.patch_size")
        m = self.recipe.model
        return {VELOCITY: MMDiT(self.mmdit_config(), attention_backend=m.attention_backend,
                                gradient_checkpointing=m.gradient_checkpointing)}

    @classmethod
    def validate_recipe(cls, recipe: Any, source: str | None) -> None:
        axes = recipe.data.spec.latent_axes
        if len(recipe.model.patch_size) != axes:
            raise ConfigError(f"{list(recipe.model.patch_size)} has {len(recipe.model.patch_size)} entries; "
                              f"{recipe.data.modality} latents have {axes} axes", "model.patch_size", source)
        if recipe.model.hidden_size % recipe.model.num_heads:
            raise ConfigError(f"{recipe.model.num_heads} does not divide hidden_size {recipe.model.hidden_size}",
                              "model.num_heads", source)

    # ------------------------------------------------------------------ data
    def cache_dir(self) -> Path:
        return Path(self.recipe.data.cache) if self.recipe.data.cache else self.run_dir / "cache"

    def raw_dataset(self) -> MediaFolderDataset:
        return MediaFolderDataset(self.recipe.data, seed=self.recipe.seed)

    def describe(self, dataset: MediaFolderDataset) -> dict[str, Any]:
        return cache_describe(self.recipe, dataset, self.encoders)

    def build_dataset(self) -> Dataset:
        raw = self.raw_dataset()
        use = self.recipe.data.use_cache
        if use == "off":
            return self.track_dropped(raw)
        problem = cache_problem(self.cache_dir(), self.describe(raw))
        if problem is None:
            logger.info("reading the cache %s", self.cache_dir())
            return CachedDataset(self.cache_dir())
        if use == "require":
            from mmflow.data.cache import StaleCacheError

            raise StaleCacheError(f"{problem}; data.use_cache is 'require': run `mmflow prepare` with this recipe")
        logger.warning("%s; training from the raw media (run `mmflow prepare` to cache them)", problem)
        return self.track_dropped(raw)

    def collate(self, items: list[Any]) -> Any:
        return collate(items) if "path" in items[0] else default_collate(items)  # raw media items carry a path

    def batch_sampler(self, dataset: Dataset, local_batch: int, rank: int, world_size: int, seed: int,
                      start: int) -> Any:
        if isinstance(dataset, MediaFolderDataset):  # (index, epoch) keys: fresh crops each epoch, buckets
            return dataset.batch_sampler(local_batch, rank, world_size, start)
        # the cache is read in the order the raw media would be, so caching changes no training result
        raw = self.raw_dataset().batch_sampler(local_batch, rank, world_size, start)
        return CacheOrder(raw, [int(k) for k in dataset.keys], len(self.raw_dataset()))

    # ------------------------------------------------------------------ loss
    def loss(self, models: dict[str, nn.Module], batch: Any, rng: BatchRandom, optimizer: str, step: int) -> LossOutput:
        # raw or cached batch -> latents and text with per-encoder dropout (the trainer placed the encoders)
        enc = self.encoders.encode_batch(batch, rng)
        return self.flow_loss(models[VELOCITY], enc.z, enc.text.as_condition(), rng)

    def null_condition(self, model: nn.Module) -> dict[str, Tensor]:
        return self.encoders.null().as_condition()  # on the device the frozen models were placed on

    # ------------------------------------------------------------------ sampling
    def sample_media(self, velocity: nn.Module, prompts: Sequence[str], device: torch.device, sample_cfg: Any,
                     guidance: float | None = None, check_finite: bool = True) -> Tensor:
        """One item per prompt -> media (P, *media_shape) on CPU, clamped to [-1, 1]; noise from sample_cfg.seed."""
        self.place_frozen_models(device)  # sampling outside the trainer (`mmflow sample --device`)
        x0, g = seeded_noise((len(prompts), *self.latent_shape()), sample_cfg.seed)
        cond = self.encoders.encode_prompts(prompts).as_condition()
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
        return {"sample_std": float(media.std()), "sample_mean": float(media.mean())}

    def pipeline_info(self) -> dict[str, Any]:
        return {"task": self.name, "model": VELOCITY}

    def generate(self, model: nn.Module, num: int, device: torch.device, sample_cfg: Any, out_dir: Path,
                 label: int | None = None, prompts: Sequence[str] | None = None) -> dict[str, Any]:
        """`mmflow sample`: `num` items per prompt (default: the validation prompts) into out_dir."""
        if label is not None:
            raise ConfigError(f"{self.name} is text-conditional: use --prompt, not --label")
        prompts = list(prompts or self.eval_prompts())
        rows = [p for p in prompts for _ in range(num)]
        media = self.sample_media(model, rows, device, sample_cfg)
        files = write_samples(media, rows, self.recipe.data, out_dir, per_prompt=num)
        return {"num_per_prompt": num, "prompts": prompts, "files": [str(f) for f in files]}


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
