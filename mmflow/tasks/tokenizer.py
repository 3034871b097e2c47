"""Training a tokenizer (the image, video or audio VAE) with the shared trainer.

One task, `tokenizer`; `data.modality` picks the VAE. Models: "tokenizer" (the VAE) and, when
model.loss.adv_weight > 0, "discriminator" (a PatchGAN, 2-D for images, 3-D for videos). Optimizer
groups "generator" then "discriminator" are stepped in turn each step; the discriminator group is
switched on at model.loss.adv_start_step and judges the reconstruction the generator step made from
the same micro-batch (handed on detached through LossOutput.extras). The folder's last `data.held_out` items are never trained
on: validation reconstructs them and reports PSNR (image, video; pixels mapped to [0, 1]) or the
multi-scale STFT distance beside those of silence and of noise (audio); image and video validation
also reports `hue_error` (mmflow.metrics.reconstruction). After the last step the
latent statistics are measured on training items and written into the tokenizer's config, so the
exported model/models/tokenizer/config.json carries latent_shift / latent_scale.

    mmflow train tokenizers/image_f8.yaml
    mmflow train tokenizers/audio.yaml train.max_steps=3000 data.path=my_music
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from mmflow.config import ConfigError, from_dict, to_dict
from mmflow.data.bad_items import BadDataError, BadMedia
from mmflow.data.media_folder import MAX_CANDIDATES, MediaFolderConfig, MediaFolderDataset, collate
from mmflow.metrics.reconstruction import hue_error, psnr
from mmflow.model_io import CONFIG_NAME, read_json_object
from mmflow.tasks import register_task
from mmflow.tasks.media_accounting import MediaAccounting
from mmflow.tokenizers import (
    AUDIO_VAE_PRESETS, IMAGE_VAE_PRESETS, VIDEO_VAE_PRESETS, AudioVAE, ImageVAE, PatchDiscriminator,
    PatchDiscriminatorConfig, Tokenizer, TokenizerOutput, VAELoss, VAELossConfig, VideoVAE, apply_latent_stats,
    measure_latent_stats, stft_distance,
)
from mmflow.train.init_from import init_model_folder
from mmflow.train.random import BatchRandom
from mmflow.train.task import LossOutput, Task, format_metric
from mmflow.utils.seeding import mix_seed

logger = logging.getLogger("mmflow.tasks")

TOKENIZER, DISCRIMINATOR = "tokenizer", "discriminator"  # model names
GENERATOR = "generator"  # optimizer group of the tokenizer
RECONSTRUCTION = "reconstruction"  # the generator step's LossOutput.extras key: its detached x_hat
# the VAE class and size presets that train each modality, under the VAE's own `modality`
VAES: dict[str, tuple[type[Tokenizer], dict[str, dict[str, Any]]]] = {
    vae.modality: (vae, presets)
    for vae, presets in ((ImageVAE, IMAGE_VAE_PRESETS), (VideoVAE, VIDEO_VAE_PRESETS), (AudioVAE, AUDIO_VAE_PRESETS))
}


def vae_kind(modality: str, source: str | None = None) -> tuple[type[Tokenizer], dict[str, dict[str, Any]]]:
    """(VAE class, its presets) for a modality; ConfigError when no VAE trains it."""
    kind = VAES.get(modality)
    if kind is None:
        raise ConfigError(f"no tokenizer trains {modality!r} media; VAEs exist for {sorted(VAES)}", "data.modality",
                          source)
    return kind


def spatial_factor(vae: Any) -> int:
    """The H and W downsampling of a VAE config (image VAEs call it downsample_factor, video VAEs spatial_factor)."""
    return getattr(vae, "spatial_factor", None) or vae.downsample_factor


@dataclass
class TokenizerDataConfig(MediaFolderConfig):
    """A media folder (mmflow.data.media_folder) plus the held-out split and the statistics sample."""

    held_out: int = field(default=16, metadata={"min": 1, "help": "the folder's last N items: validation only, never trained on"})
    stats_items: int = field(default=512, metadata={"min": 1, "help": "training items encoded to measure latent statistics"})
    val_examples: int = field(default=8, metadata={"min": 1, "help": "held-out items drawn in the picture / written as WAVs"})
    train_crop: int | None = field(default=None, metadata={
        "min": 1, "help": "train on random square crops of this side cut from each item (image, video; a fresh crop "
                          "per epoch); validation reconstructs whole items. null: whole items"})
    train_colour_permute: float = field(default=0.0, metadata={
        "min": 0.0, "max": 1.0, "help": "probability that a training item's RGB channels come in a random other order "
                                        "(image, video; drawn per item and epoch): spreads a folder's few dominant "
                                        "hues round the colour wheel, so rare hues are learnt too. 0: never"})


@dataclass
class DiscriminatorSection:
    base_channels: int = field(default=64, metadata={"min": 1, "help": "first layer width (doubles per layer, at most 8x)"})
    n_layers: int = field(default=3, metadata={"min": 1, "help": "stride-2 layers; needs data.size >= 3 * 2 ** n_layers"})


@dataclass
class TokenizerModelConfig:
    preset: str | None = field(default="tiny", metadata={"help": "size preset of the modality's VAE; null: the config defaults"})
    vae: dict[str, Any] = field(default_factory=dict, metadata={"help": "VAE config fields over the preset, e.g. latent_channels: 16"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute each VAE level in backward: less memory, more compute (image VAE only; not saved with it)"})
    freeze_encoder: bool = field(default=False, metadata={
        "help": "train the decoder only (as Stable Diffusion's ft-MSE VAE decoders were): the encoder and the latent "
                "statistics stay train.init_from's, so latents cached through it, and flow models trained on "
                "them, stay valid with the new decoder"})
    discriminator: DiscriminatorSection = field(default_factory=DiscriminatorSection)
    loss: VAELossConfig = field(default_factory=VAELossConfig)


def tokenizer_config(data: TokenizerDataConfig, model: TokenizerModelConfig, source: str | None = None) -> Any:
    """The VAE config of a recipe: preset fields, then model.vae, then what the data fixes (channels, rate)."""
    vae_cls, presets = vae_kind(data.modality, source)
    fields: dict[str, Any] = {}
    if model.preset is not None:
        if model.preset not in presets:
            raise ConfigError(f"{model.preset!r} is not a {data.modality} VAE preset; known: {sorted(presets)}",
                              "model.preset", source)
        fields.update(presets[model.preset])
    if "gradient_checkpointing" in model.vae:  # was a VAE config field; now a run-time setting of the task
        raise ConfigError("gradient_checkpointing is a training setting, not saved with the VAE: set "
                          "model.gradient_checkpointing instead", "model.vae.gradient_checkpointing", source)
    fields.update(model.vae)
    implied = data.spec.tokenizer_fields(data)  # channels (RGB for images and videos), audio's sample rate
    for key, value in implied.items():
        if key in model.vae and model.vae[key] != value:
            raise ConfigError(f"{model.vae[key]!r} disagrees with the data, which gives {value!r} "
                              f"(set it in the data section, or drop it here)", f"model.vae.{key}", source)
        fields[key] = value
    return from_dict(vae_cls.config_class, to_dict(fields), source=source, prefix="model.vae")


@contextmanager
def frozen(module: nn.Module | None) -> Iterator[None]:
    """No parameter gradients for `module` inside (the discriminator while the generator learns)."""
    params = [p for p in module.parameters() if p.requires_grad] if module is not None else []
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


# the five orders of (R, G, B) other than the identity: each maps a hue to another sextant of the wheel
OTHER_RGB_ORDERS = ((0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def random_colour_permute(media: Tensor, p: float, g: torch.Generator) -> Tensor:
    """media (3, ...) with its channels in a random other order with probability p (draws from g)."""
    if float(torch.rand((), generator=g)) >= p:
        return media
    return media[list(OTHER_RGB_ORDERS[int(torch.randint(0, len(OTHER_RGB_ORDERS), (), generator=g))])]


def random_crop(media: Tensor, side: int, g: torch.Generator) -> Tensor:
    """A side x side window of media (C, ..., H, W) at a position drawn from g."""
    h, w = media.shape[-2:]
    top = int(torch.randint(0, h - side + 1, (), generator=g))
    left = int(torch.randint(0, w - side + 1, (), generator=g))
    return media[..., top: top + side, left: left + side]


class TrainingItems(Dataset):
    """Items [0, n_train) of a media folder; a bad item's replacement is also drawn from them, so the
    held-out items [n_train, len) are never trained on. With `crop`, each item is a random crop of that
    side; with `colour_permute` > 0, its RGB channels are reordered with that probability; both drawn from
    (seed, index, epoch) like the folder's own random choices."""

    def __init__(self, folder: MediaFolderDataset, n_train: int, crop: int | None = None,
                 colour_permute: float = 0.0) -> None:
        self.folder, self.n_train, self.crop, self.colour_permute = folder, n_train, crop, colour_permute

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        item = self._item(key)
        if self.crop is None and not self.colour_permute:
            return item
        i, epoch = self._index_epoch(key)
        g = torch.Generator().manual_seed(mix_seed(self.folder.seed, 0xC409, i, epoch))
        media = item["media"] if self.crop is None else random_crop(item["media"], self.crop, g)
        if self.colour_permute:
            media = random_colour_permute(media, self.colour_permute, g)
        return {**item, "media": media}

    def __len__(self) -> int:
        return self.n_train

    def _index_epoch(self, key: int | tuple[int, int]) -> tuple[int, int]:
        return (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), self.folder.epoch)

    def whole(self) -> TrainingItems:
        """The same items uncropped, in their own colours."""
        return TrainingItems(self.folder, self.n_train)

    def _item(self, key: int | tuple[int, int]) -> dict[str, Any]:
        i, epoch = self._index_epoch(key)
        if not 0 <= i < self.n_train:
            raise IndexError(f"training item {i} outside [0, {self.n_train})")
        item = self.folder[(i, epoch)]
        if item["index"] < self.n_train:
            return item
        # the folder's replacement search reached a held-out item: search the training items instead
        bad, size = list(item["bad"]), self.folder.buckets[self.folder.bucket_of[i]]
        for j in itertools.islice(itertools.chain(range(i + 1, self.n_train), range(i)), MAX_CANDIDATES):
            try:
                found = self.folder.load(j, epoch, size)
            except BadMedia as exc:
                bad.append((str(self.folder.entries[j].path), exc.reason))
                continue
            return {**found, "bad": bad, "requested": i}
        raise BadDataError(f"item {i} and the training items tried in its place are all bad (first: {bad[:3]})")


@register_task
class TokenizerTask(MediaAccounting, Task):
    name = "tokenizer"
    data_config_class = TokenizerDataConfig
    model_config_class = TokenizerModelConfig

    def __init__(self, recipe: Any) -> None:
        super().__init__(recipe)
        self.modality: str = recipe.data.modality
        self.spec = recipe.data.spec
        self.vae_config = tokenizer_config(recipe.data, recipe.model)
        rate = self.spec.tokenizer_fields(recipe.data).get("sample_rate")  # audio: the STFT / mel losses' rate
        self.vae_loss = VAELoss(recipe.model.loss, sample_rate=rate)
        self._folder: MediaFolderDataset | None = None
        self._held_out: Tensor | None = None

    @property
    def adversarial(self) -> bool:
        return self.recipe.model.loss.adv_weight > 0

    # ------------------------------------------------------------------ models
    def build_models(self) -> dict[str, nn.Module]:
        vae = vae_kind(self.modality)[0](self.vae_config)
        if self.recipe.model.gradient_checkpointing:  # validate_recipe: only VAEs that have it
            vae.set_gradient_checkpointing(True)
        for module in vae.encoder_modules() if self.recipe.model.freeze_encoder else ():
            module.requires_grad_(False)  # the optimizer skips them; init_from loads them after
        models: dict[str, nn.Module] = {TOKENIZER: vae}
        if self.adversarial:
            d = self.recipe.model.discriminator
            models[DISCRIMINATOR] = PatchDiscriminator(PatchDiscriminatorConfig(
                in_channels=3, base_channels=d.base_channels, n_layers=d.n_layers,
                dims=self.spec.latent_axes))
        return models

    def optimizer_groups(self, models: dict[str, nn.Module]) -> dict[str, list[str]]:
        return {GENERATOR: [TOKENIZER], DISCRIMINATOR: [DISCRIMINATOR]} if DISCRIMINATOR in models else {GENERATOR: [TOKENIZER]}

    def optimizer_active(self, optimizer: str, step: int) -> bool:
        return optimizer != DISCRIMINATOR or step >= self.recipe.model.loss.adv_start_step

    def ema_models(self, models: dict[str, nn.Module]) -> list[str]:
        return [TOKENIZER]  # the discriminator is thrown away after training

    def pipeline_info(self) -> dict[str, Any]:
        return {"task": self.name, "model": TOKENIZER, "modality": self.modality}

    @classmethod
    def validate_recipe(cls, recipe: Any, source: str | None) -> None:
        data, model = recipe.data, recipe.model
        if data.bucketing:
            raise ConfigError("the tokenizer task trains on one size (the trainer's sampler mixes buckets); "
                              "set data.bucketing: false", "data.bucketing", source)
        vae = tokenizer_config(data, model, source)
        if model.freeze_encoder and recipe.train.init_from is None:
            raise ConfigError("a decoder-only fine-tune keeps a trained encoder: set train.init_from to the tokenizer "
                              "(run or model folder) whose encoder to keep", "model.freeze_encoder", source)
        if model.gradient_checkpointing and not hasattr(vae_kind(data.modality)[0], "set_gradient_checkpointing"):
            raise ConfigError(f"the {data.modality} VAE has no gradient checkpointing (the image VAE has); set it to false",
                              "model.gradient_checkpointing", source)
        loss = model.loss
        if not data.spec.spatial:  # waveforms: no square crops, no PatchGAN; STFT / mel losses instead
            if data.train_crop is not None:
                raise ConfigError(f"crops are for images and videos; {data.modality} clips are cut to data.seconds",
                                  "data.train_crop", source)
            if data.train_colour_permute:
                raise ConfigError(f"colour permutation is for RGB images and videos, not {data.modality}; set it to 0",
                                  "data.train_colour_permute", source)
            if loss.chroma_weight > 0:
                raise ConfigError(f"chroma is a colour loss for images and videos; set it to 0 for {data.modality}",
                                  "model.loss.chroma_weight", source)
            if loss.adv_weight > 0:
                raise ConfigError(f"no {data.modality} discriminator yet (PatchDiscriminator judges images and videos); "
                                  "set it to 0", "model.loss.adv_weight", source)
            return
        for key in ("stft_weight", "mel_weight"):
            if getattr(loss, key) > 0:
                raise ConfigError(f"{key} is an audio loss; set it to 0 for {data.modality}", f"model.loss.{key}", source)
        factor = spatial_factor(vae)
        if data.size % factor:
            raise ConfigError(f"{data.size} is not a multiple of the VAE's downsampling factor {factor}", "data.size", source)
        if data.train_crop is not None and (data.train_crop > data.size or data.train_crop % factor):
            raise ConfigError(f"{data.train_crop} must be at most data.size ({data.size}) and a multiple of the VAE's "
                              f"downsampling factor {factor}", "data.train_crop", source)
        if hasattr(vae, "temporal_factor") and (data.frames - 1) % vae.temporal_factor and not vae.pad_frames:
            tf = vae.temporal_factor
            raise ConfigError(f"{data.frames} frames do not fit the VAE's temporal factor {tf}: use 1 + {tf}k frames "
                              f"(e.g. {1 + 2 * tf}, {1 + 3 * tf}) or model.vae.pad_frames: true", "data.frames", source)
        need, side = 3 * 2 ** model.discriminator.n_layers, data.train_crop or data.size
        if loss.adv_weight > 0 and side < need:
            raise ConfigError(f"{model.discriminator.n_layers} layers need training items of side >= {need}, got {side} "
                              f"(data.{'train_crop' if data.train_crop else 'size'})", "model.discriminator.n_layers", source)

    # ------------------------------------------------------------------ data
    def folder(self) -> MediaFolderDataset:
        """The whole media folder (training items first, the last data.held_out items held out)."""
        if self._folder is None:
            folder = MediaFolderDataset(self.recipe.data, seed=self.recipe.seed)
            held = self.recipe.data.held_out
            if held >= len(folder):
                raise ConfigError(f"{held} leaves no training items: {self.recipe.data.path} holds {len(folder)} "
                                  f"{self.modality} items", "data.held_out")
            self._folder = folder
        return self._folder

    @property
    def num_train(self) -> int:
        return len(self.folder()) - self.recipe.data.held_out

    def build_dataset(self) -> TrainingItems:
        data = self.recipe.data
        return TrainingItems(self.folder(), self.num_train, crop=data.train_crop, colour_permute=data.train_colour_permute)

    def collate(self, items: list[Any]) -> Any:
        return collate(items)

    def held_out_media(self) -> Tensor:
        """The held-out items' media (N, C, ...) (bad ones skipped with a warning), loaded once."""
        if self._held_out is None:
            folder, media = self.folder(), []
            for i in range(self.num_train, len(folder)):
                try:
                    media.append(folder.load(i)["media"])
                except BadMedia as exc:
                    logger.warning("held-out item %s is unusable (%s); validating without it", folder.entries[i].path, exc.reason)
            if not media:
                raise BadDataError(f"all {self.recipe.data.held_out} held-out items of {folder.root} are bad")
            self._held_out = torch.stack(media)
        return self._held_out

    # ------------------------------------------------------------------ loss
    def reconstruct(self, model: nn.Module, x: Tensor, rng: BatchRandom) -> tuple[Tensor, TokenizerOutput]:
        """The VAE's training pass on x (B, C, ...), posterior noise from `rng`: (x_hat like x, the VAE's output).

        `model` may be DDP-wrapped: the call goes through its forward, which arms the gradient all-reduce.
        x_hat takes x's dtype, as accelerate's wrapper would give a tuple's tensors under mixed precision.
        """
        out = model(x, noise=rng.randn)
        return out.reconstruction.to(x.dtype), out

    def loss(self, models: dict[str, nn.Module], batch: Any, rng: BatchRandom, optimizer: str, step: int,
             carry: dict[str, Tensor] | None = None) -> LossOutput:
        """The generator step hands its detached reconstruction on (extras); the discriminator step judges
        it when the trainer passes it back as `carry`, or reconstructs the micro-batch again without it."""
        # audio: zero padding past a short file's end (batch["mask"]) is a target like any other:
        # silence in, silence out
        x = batch["media"]
        loss_fn = self.vae_loss.to(x.device)
        if optimizer == GENERATOR:
            x_hat, vae_out = self.reconstruct(models[TOKENIZER], x, rng)
            disc = models.get(DISCRIMINATOR)  # its gradients are not this group's: the trainer skips their sync
            with frozen(disc):
                out = loss_fn.generator_loss(x, x_hat, vae_out.posterior, step, disc, vae_out.last_layer)
            loss = out.loss
            if vae_out.decoder_loss is not None:  # the decoder's own term (the audio VAE's magnitude head)
                loss = loss + vae_out.decoder_loss
                out.logs["decoder"] = vae_out.decoder_loss.item()
            return LossOutput(loss, out.logs, extras={RECONSTRUCTION: x_hat.detach()})
        x_hat = (carry or {}).get(RECONSTRUCTION)
        if x_hat is None:  # called without the generator step's hand-off (e.g. on its own)
            with torch.no_grad():
                x_hat, _ = self.reconstruct(models[TOKENIZER], x, rng)
        elif x_hat.shape != x.shape:
            raise ValueError(f"the carried reconstruction {tuple(x_hat.shape)} is not of this micro-batch {tuple(x.shape)}")
        out = loss_fn.discriminator_loss(x, x_hat, models[DISCRIMINATOR], step)
        return LossOutput(out.loss, out.logs)

    # ------------------------------------------------------------------ validation and export
    def reconstruct_mean(self, vae: nn.Module, x: Tensor, device: torch.device) -> Tensor:
        """Posterior-mean reconstructions of x (N, C, ...) in chunks of train.batch_size -> (N, C, ...) on CPU."""
        out = []
        for lo in range(0, len(x), self.recipe.train.batch_size):
            chunk = x[lo: lo + self.recipe.train.batch_size].to(device)
            out.append(vae.decode(vae.encode(chunk).mode(), like_shape=chunk.shape).float().cpu())
        return torch.cat(out)

    def validate(self, models: dict[str, nn.Module], out_dir: Path, step: int, device: torch.device) -> dict[str, float]:
        """Reconstruct the held-out items: PSNR (image, video) or STFT distances (audio), a picture of
        originals above reconstructions, and (video, audio) each of them as a file."""
        x = self.held_out_media()
        x_hat = self.reconstruct_mean(models[TOKENIZER], x, device)
        k = min(self.recipe.data.val_examples, len(x))
        metrics = {"held_out_items": float(len(x)), "l1": float((x_hat - x).abs().mean())}
        if self.spec.spatial:
            per_item = psnr(x_hat, x)  # (N,)
            metrics.update(psnr=float(per_item.mean()), psnr_min=float(per_item.min()),
                           hue_error=hue_error(x, x_hat))  # degrees over saturated pixels; NaN (null) if none
            score = f"PSNR {metrics['psnr']:.2f} dB"
        else:
            g = torch.Generator().manual_seed(0)
            rms = x.flatten(1).square().mean(1).sqrt().view(-1, 1, 1)  # (N, 1, 1)
            noise = torch.randn(x.shape, generator=g) * rms  # white noise as loud as each item
            metrics.update(stft_distance=float(stft_distance(x_hat, x).mean()),
                           stft_distance_silence=float(stft_distance(torch.zeros_like(x), x).mean()),
                           stft_distance_noise=float(stft_distance(noise, x).mean()))
            score = f"STFT distance {metrics['stft_distance']:.3f}"
        title = f"step {step}: held-out {score} (top: original, below: reconstruction)"
        pairs = torch.stack([x[:k], x_hat[:k]])  # (2, k, C, ...)
        self.spec.preview(pairs, out_dir / "reconstructions.png", labels=["original", "reconstruction"], title=title)
        if self.spec.item_files:
            d = self.recipe.data
            for i in range(k):
                for name, media in (("original", x[i]), ("reconstruction", x_hat[i])):
                    self.spec.write(media, out_dir / f"{name}_{i}{self.spec.suffix}", fps=d.fps, sample_rate=d.sample_rate)
        return metrics

    def finish_models(self, models: dict[str, nn.Module], dataset: Dataset, device: torch.device) -> None:
        """Measure per-channel latent statistics on up to data.stats_items training items and store them; a
        decoder-only fine-tune (model.freeze_encoder) keeps its init_from tokenizer's instead, so its latents
        are those of the tokenizer it started from, number for number."""
        vae = models[TOKENIZER]
        if self.recipe.model.freeze_encoder:
            src = init_model_folder(Path(self.recipe.train.init_from), TOKENIZER)
            saved = read_json_object(src / CONFIG_NAME).get("config", {})
            if saved.get("latent_shift") is None or saved.get("latent_scale") is None:
                raise ConfigError(f"{src} has no latent statistics to keep (a tokenizer whose run did not finish?)",
                                  "train.init_from")
            apply_latent_stats(vae, saved["latent_shift"], saved["latent_scale"])
            logger.info("latent statistics kept from %s (the encoder was frozen)", src)
            return
        if isinstance(dataset, TrainingItems):
            dataset = dataset.whole()  # statistics of the latents the flow model will see: whole items
        n = min(len(dataset), self.recipe.data.stats_items)
        rows = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(self.recipe.seed))[:n].tolist()
        loader = DataLoader(Subset(dataset, rows), batch_size=self.recipe.train.batch_size, collate_fn=self.collate,
                            num_workers=self.recipe.train.num_workers)
        moments = measure_latent_stats(vae, loader, key="media")
        shift, scale = moments.shift_scale()
        apply_latent_stats(vae, shift, scale)
        std = moments.std
        logger.info("latent statistics over %d items (%d values per channel): |mean| <= %.3g, std in [%.3g, %.3g]",
                    n, moments.count, float(moments.mean.abs().max()), float(std.min()), float(std.max()))

    def summary_lines(self, metrics: dict[str, float | None], run_dir: Path) -> list[str]:
        """Held-out reconstruction quality, then the media accounting's lines."""
        recon = {k: v for k, v in metrics.items() if k.startswith(("psnr", "hue_error", "stft_distance", "l1"))}
        own = ["held-out reconstruction: " + ", ".join(f"{k} {format_metric(v, '.4g')}" for k, v in sorted(recon.items()))]
        return (own if recon else []) + super().summary_lines(metrics, run_dir)
