"""The frozen encoders of a media recipe: the tokenizer (a VAE folder, or none: pixel/waveform space) and
the text conditioner. Training, `mmflow prepare` and sampling all go through this one object, so
"media and captions -> (latents z, text condition)" exists once, and so do the cache's field names:

    latent_mean, latent_std             (C, ...) the tokenizer's posterior (training draws z ~ q(z|x) from it)
    media                               (C, ...) without a tokenizer: the media tensor itself
    text.<encoder>.tokens|mask|pooled   (S, D), (S,), (D_pool,): each text encoder's output, before dropout

    enc = MediaEncoders(recipe.model.tokenizer, recipe.model.text).to(device)
    fields = enc.cache_fields(media, captions)     # `mmflow prepare`: batched cache fields
    out = enc.encode_batch(batch, rng)             # training: raw {"media", "text"} or cached fields
    media = enc.decode(z, like_shape)              # sampling: normalised latents -> media
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from mmflow.config import ConfigError
from mmflow.flow.cfg import condition_dropout_mask
from mmflow.text.combine import TextConditioner, TextConditionerConfig, combine_parts
from mmflow.text.encoder import TextEmbedding
from mmflow.train.random import BatchRandom

LATENT_MEAN, LATENT_STD, MEDIA = "latent_mean", "latent_std", "media"
TEXT_PARTS = ("tokens", "mask", "pooled")  # the fields of a TextEmbedding, cached per encoder


def _text_field(encoder: str, part: str) -> str:
    return f"text.{encoder}.{part}"


def folder_fingerprint(folder: str | Path) -> str:
    """sha256 over a model folder's config.json and weight files (contents), in name order."""
    h = hashlib.sha256()
    for f in sorted(Path(folder).iterdir()):
        if f.is_file() and (f.name == "config.json" or f.suffix == ".safetensors" or f.name.endswith(".index.json")):
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def _cached_embedding(batch: Mapping[str, Any], encoder: str) -> TextEmbedding:
    tokens, mask, pooled = (batch[_text_field(encoder, part)] for part in TEXT_PARTS)
    return TextEmbedding(tokens, mask.bool(), pooled)


def _frozen(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


@dataclass
class EncodedBatch:
    """z: (B, C, ...) normalised latents (a posterior sample); text: the combined condition after each
    encoder's CFG dropout, tokens (B, S, D), mask (B, S), pooled (B, D_pool)."""

    z: Tensor
    text: TextEmbedding


class MediaEncoders:
    """The tokenizer and text conditioner, loaded on first use, frozen (eval mode, no gradients)."""

    def __init__(self, tokenizer: str | None, text: TextConditionerConfig) -> None:
        self.tokenizer_path = tokenizer  # a model folder (any built-in tokenizer type), or None
        self.text_config = text
        self._tokenizer: nn.Module | None = None
        self._text: TextConditioner | None = None
        self._latent_shape: tuple[int, ...] | None = None

    # ------------------------------------------------------------------ the modules
    @property
    def has_tokenizer(self) -> bool:
        return self.tokenizer_path is not None

    @property
    def tokenizer(self) -> nn.Module | None:
        """The frozen tokenizer (loaded on first access), or None in pixel/waveform space."""
        path = self.tokenizer_path
        if path is not None and self._tokenizer is None:
            import mmflow.builtin_models  # noqa: F401  (whatever type the folder names)
            from mmflow.model_io import load_model

            if not Path(path).is_dir():
                raise ConfigError(f"{path} is not a folder (train one with `mmflow train tokenizers/<name>.yaml` "
                                  f"or convert one with `mmflow convert diffusers-vae`)", "model.tokenizer")
            self._tokenizer = _frozen(load_model(path))
        return self._tokenizer

    @property
    def text(self) -> TextConditioner:
        """The frozen text conditioner (loaded on first access)."""
        if self._text is None:
            self._text = _frozen(TextConditioner(self.text_config))  # type: ignore[assignment]
        return self._text  # type: ignore[return-value]

    def modules(self) -> dict[str, nn.Module]:
        """{"text": ..., "tokenizer": ... (if any)}, loaded on first call: what the trainer places."""
        frozen: dict[str, nn.Module] = {"text": self.text}
        if self.tokenizer is not None:
            frozen["tokenizer"] = self.tokenizer
        return frozen

    def to(self, device: torch.device | str) -> MediaEncoders:
        for module in self.modules().values():
            module.to(device)
        return self

    @property
    def context_dim(self) -> int:
        """Width D of the text tokens the velocity model attends to."""
        return self.text_config.out_width

    @property
    def pooled_dim(self) -> int:
        return self.text_config.pooled_width

    def latent_shape(self, media_shape: Sequence[int]) -> tuple[int, ...]:
        """(C, *axes) of one item's latents: media_shape through the tokenizer (one probe encode)."""
        if self._latent_shape is None:
            tok = self.tokenizer
            if tok is None:
                self._latent_shape = tuple(media_shape)
            else:
                with torch.no_grad():
                    probe = torch.zeros(1, *media_shape, device=next(tok.parameters()).device)
                    self._latent_shape = tuple(tok.encode(probe).mean.shape[1:])
        return self._latent_shape

    # ------------------------------------------------------------------ cache
    def describe(self) -> dict[str, Any]:
        """What encoded values depend on (the cache's fingerprint): the tokenizer folder's and the text
        encoders' fingerprints."""
        return {"tokenizer": None if self.tokenizer is None else folder_fingerprint(self.tokenizer_path),  # type: ignore[arg-type]
                "text": self.text_config.fingerprint()}

    def cache_fields(self, media: Tensor, captions: Sequence[str]) -> dict[str, Tensor]:
        """Media (b, *media_shape) on the encoders' device and their b captions -> batched cache fields
        (b, ...) by name (see the module docstring); no sampling, no dropout."""
        with torch.no_grad():
            if self.tokenizer is not None:
                post = self.tokenizer.encode(media)
                fields = {LATENT_MEAN: post.mean, LATENT_STD: post.std}
            else:
                fields = {MEDIA: media}
            for n, emb in self.text.encode_each(list(captions)).items():
                fields.update({_text_field(n, part): getattr(emb, part) for part in TEXT_PARTS})
        return fields

    # ------------------------------------------------------------------ training
    def encode_batch(self, batch: Mapping[str, Any], rng: BatchRandom, dropout: bool = True) -> EncodedBatch:
        """A raw media batch {"media", "text": captions} or a cached one (`cache_fields`, collated) ->
        latents and text condition. Draws from rng, in this order: the posterior noise (B, C, ...), then
        with `dropout` each encoder's CFG drop mask (model.text.encoders[i].dropout > 0)."""
        z = self._latents(batch, rng)
        drop = {}
        if dropout:
            drop = {e.key: rng.draw(lambda n, g, p=e.dropout: condition_dropout_mask(n, p, generator=g))
                    for e in self.text_config.encoders if e.dropout > 0}
        return EncodedBatch(z, combine_parts(self.text_config, self._text_parts(batch), self.text.null_each(), drop))

    def _latents(self, batch: Mapping[str, Any], rng: BatchRandom) -> Tensor:
        """Normalised latents (B, C, ...): a posterior sample from the cached mean/std or a fresh encode."""
        if LATENT_MEAN in batch:
            return self._sample(batch[LATENT_MEAN], batch[LATENT_STD], rng)
        media = batch[MEDIA]  # raw media, or cached ones in pixel/waveform space
        if self.tokenizer is None:
            return media
        with torch.no_grad():
            post = self.tokenizer.encode(media)
        return self._sample(post.mean, post.std, rng)

    def _sample(self, mean: Tensor, std: Tensor, rng: BatchRandom) -> Tensor:
        return self.tokenizer.normalize(mean + std * rng.randn(*mean.shape[1:]).to(mean.dtype))  # type: ignore[union-attr]

    def _text_parts(self, batch: Mapping[str, Any]) -> dict[str, TextEmbedding]:
        if "text" in batch:  # raw media: encode the captions now
            return self.text.encode_each(batch["text"])
        return {n: _cached_embedding(batch, n) for n in self.text_config.names}

    # ------------------------------------------------------------------ sampling
    def encode_prompts(self, prompts: Sequence[str]) -> TextEmbedding:
        """Prompts -> the combined condition (P rows), no dropout."""
        return self.text(list(prompts))

    def null(self) -> TextEmbedding:
        """u(null) of classifier-free guidance: every encoder dropped, batch 1."""
        return self.text.null_condition()

    def decode(self, z: Tensor, like_shape: Sequence[int] | None = None) -> Tensor:
        """Normalised latents (B, C_lat, ...) -> media (B, C, ...), cropped to like_shape's trailing axes
        (B, C, ...) where the tokenizer pads; without a tokenizer z is the media already."""
        tok = self.tokenizer
        return z if tok is None else tok.decode(tok.denormalize(z), like_shape)
