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

An exported model folder carries its frozen components (`export`; layout there), so it samples after
every source path is gone; `resolve_exported` points a saved recipe at them.
"""

from __future__ import annotations

import copy
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from mmflow.config import ConfigError, from_dict
from mmflow.flow.cfg import condition_dropout_mask
from mmflow.model_io import CorruptModel
from mmflow.text.combine import TextConditioner, TextConditionerConfig, combine_parts
from mmflow.text.default import DEFAULT_ENCODER, TextEncoderNotFound, is_default_name, resolve_encoder_path
from mmflow.text.encoder import TextEmbedding, TextEncoderConfig
from mmflow.train.random import BatchRandom

LATENT_MEAN, LATENT_STD, MEDIA = "latent_mean", "latent_std", "media"
TEXT_PARTS = ("tokens", "mask", "pooled")  # the fields of a TextEmbedding, cached per encoder


def _text_field(encoder: str, part: str) -> str:
    return f"text.{encoder}.{part}"


def _is_model_file(f: Path) -> bool:
    """config.json, *.safetensors and their *.index.json: what a model folder is (and its fingerprint covers)."""
    return f.is_file() and (f.name == "config.json" or f.suffix == ".safetensors" or f.name.endswith(".index.json"))


def folder_fingerprint(folder: str | Path) -> str:
    """sha256 over a model folder's config.json and weight files (contents), in name order."""
    h = hashlib.sha256()
    for f in sorted(Path(folder).iterdir()):
        if _is_model_file(f):
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


# Other runtimes' copies of a text encoder's weights (only safetensors load) and VCS data: left out of an export.
_OTHER_FORMATS = (".bin", ".pt", ".pth", ".ckpt", ".onnx", ".h5", ".msgpack", ".ot", ".tflite")
_OTHER_DIRS = ("onnx", "openvino", ".git")


def _skip_other_formats(folder: str, names: list[str]) -> set[str]:
    """shutil.copytree's `ignore`: weights in other formats and folders of other runtimes."""
    return {n for n in names if n.endswith(_OTHER_FORMATS) or (n in _OTHER_DIRS and (Path(folder) / n).is_dir())}


def _skip_all_but_model_files(folder: str, names: list[str]) -> set[str]:
    """shutil.copytree's `ignore` for a byte-exact model folder: config.json and weights only, no subfolders."""
    return {n for n in names if not _is_model_file(Path(folder) / n)}


def _copy_folder(src: Path, dest: Path, ignore: Callable[[str, list[str]], set[str]]) -> None:
    if dest.is_dir() and dest.resolve() == src.resolve():
        return  # a pipeline loaded from an exported folder, saved into that same folder
    shutil.copytree(src, dest, ignore=ignore, dirs_exist_ok=True)


def export_mode(encoder: TextEncoderConfig) -> str:
    """"copy" or "reference": `export`, where auto references the default encoder (mmflow's install ships it)."""
    if encoder.export != "auto":
        return encoder.export
    return "reference" if is_default_name(encoder.path) else "copy"


def _encoder_key(entry: Mapping[str, Any]) -> str:
    """The key of a recipe dict's text encoder entry (as TextEncoderConfig.key derives it)."""
    return TextEncoderConfig(path=entry.get("path", DEFAULT_ENCODER), name=entry.get("name", "")).key


def _bundled(folder: Path, record: Mapping[str, Any], what: str) -> Path:
    path = folder / record["folder"]
    if not path.is_dir():
        raise CorruptModel(f"{folder}: the bundled {what} folder {path} is missing; an exported model folder must be "
                           f"copied whole (pipeline.json and all of models/)")
    return path


def export_tokenizer(src: Path, models_dir: Path) -> dict[str, str]:
    """Copy a tokenizer folder byte-exact to models_dir/tokenizer; its pipeline.json record {"folder" (relative
    to models_dir's parent), "fingerprint"}."""
    dest = models_dir / "tokenizer"
    _copy_folder(src, dest, _skip_all_but_model_files)
    return {"folder": dest.relative_to(models_dir.parent).as_posix(), "fingerprint": folder_fingerprint(dest)}


def bundled_tokenizer(folder: Path, record: Mapping[str, Any]) -> Path:
    """The tokenizer an exported `folder` bundles (pipeline.json's record), checked against its fingerprint."""
    tok = _bundled(folder, record, "tokenizer")
    if folder_fingerprint(tok) != record["fingerprint"]:
        raise CorruptModel(f"{folder}: the bundled tokenizer {tok} changed since the export (its fingerprint "
                           "differs from pipeline.json's); copy the exported folder again")
    return tok


def _remedy(key: str) -> str:
    return (f'point to it with text_encoders={{"{key}": "/path/to/encoder"}} (FlowPipeline.from_pretrained) or '
            f"--text-encoder {key}=/path/to/encoder (mmflow sample)")


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
        self._latent_shapes: dict[tuple[int, ...], tuple[int, ...]] = {}  # media shape -> latent shape

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

    def use_tokenizer(self, path: str | Path) -> None:
        """Encode and decode through the tokenizer folder `path` from now on (loaded on first use)."""
        self.tokenizer_path, self._tokenizer = str(path), None

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
        """(C, *axes) of one item's latents: media_shape through the tokenizer (its latent_shape, else one probe
        encode per shape)."""
        key = tuple(media_shape)
        if key not in self._latent_shapes:
            tok = self.tokenizer
            if tok is None:
                self._latent_shapes[key] = key
            elif hasattr(tok, "latent_shape"):  # image and video VAEs know it without encoding
                self._latent_shapes[key] = tuple(tok.latent_shape(key))
            else:
                with torch.no_grad():
                    probe = torch.zeros(1, *key, device=next(tok.parameters()).device)
                    self._latent_shapes[key] = tuple(tok.encode(probe).mean.shape[1:])
        return self._latent_shapes[key]

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

    # ------------------------------------------------------------------ export
    def export(self, models_dir: Path) -> dict[str, Any]:
        """Copy the frozen components into `models_dir` (an exported folder's models/) and return their record
        (pipeline.json's "components"; its folders are relative to models_dir's parent):

            models/tokenizer/              byte-exact config.json + *.safetensors (+ index): the same fingerprint
            models/text_encoders/<key>/    an encoder whose `export` is copy: its model folder (other weight
                                           formats left out), a separate tokenizer folder in <key>/tokenizer/

        {"tokenizer": {"folder", "fingerprint"} (absent without one), "text_encoders": {key: {"mode": "copy",
        "folder"} or {"mode": "reference", "path": as the recipe says, "fingerprint": the encoder's}}}.
        """
        root = models_dir.parent
        record: dict[str, Any] = {}
        if self.tokenizer_path is not None:
            record["tokenizer"] = export_tokenizer(Path(self.tokenizer_path), models_dir)
        encoders: dict[str, Any] = {}
        for e in self.text_config.encoders:
            if export_mode(e) == "reference":
                encoders[e.key] = {"mode": "reference", "path": e.path, "fingerprint": e.fingerprint()}
                continue
            dest = models_dir / "text_encoders" / e.key
            _copy_folder(e.model_path(), dest, _skip_other_formats)
            if e.tokenizer:
                _copy_folder(e.tokenizer_path(), dest / "tokenizer", _skip_other_formats)
            encoders[e.key] = {"mode": "copy", "folder": dest.relative_to(root).as_posix()}
        record["text_encoders"] = encoders
        return record

    @staticmethod
    def resolve_exported(recipe: dict, components: Mapping[str, Any], folder: Path,
                         text_encoders: Mapping[str, str] | None = None) -> dict:
        """A copy of an exported `recipe` dict whose tokenizer and text encoder paths point at the copies
        bundled in `folder` (the one holding pipeline.json), or at the referenced encoders; `text_encoders`
        gives a referenced encoder a new path by key. A recipe without `components` (older exports) keeps its
        paths. Raises CorruptModel for a missing or changed bundled folder, TextEncoderNotFound for a referenced
        encoder that is missing or changed since the export, ConfigError for a key that takes no path.
        """
        folder, recipe = Path(folder), copy.deepcopy(recipe)
        overrides = dict(text_encoders or {})
        model = recipe.get("model") or {}
        if "tokenizer" in components:
            model["tokenizer"] = str(bundled_tokenizer(folder, components["tokenizer"]))
        records = components.get("text_encoders", {})
        entries = model.get("text", {}).get("encoders", [])
        referenced = [k for k in map(_encoder_key, entries) if records.get(k, {}).get("mode") != "copy"]
        unknown = sorted(set(overrides) - set(referenced))
        if unknown:
            bundled = sorted(k for k, r in records.items() if r.get("mode") == "copy")
            raise ConfigError(f"{unknown} name no referenced text encoder of {folder}; it references {referenced}"
                              + (f" and bundles {bundled} (a bundled encoder takes no path)" if bundled else ""),
                              "text_encoders")
        for i, entry in enumerate(entries):
            key = _encoder_key(entry)
            record = records.get(key, {"mode": "reference", "path": entry.get("path", DEFAULT_ENCODER)})
            if record["mode"] == "copy":
                dest = _bundled(folder, record, f"text encoder {key!r}")
                tokenizer = str(dest / "tokenizer") if entry.get("tokenizer") else ""  # a separate one went there
                entry.update(path=str(dest), name=key, tokenizer=tokenizer)
                continue
            path = overrides.get(key, record["path"])
            try:
                resolve_encoder_path(path)
            except TextEncoderNotFound as e:
                raise TextEncoderNotFound(f"{folder}: its text encoder {key!r} is referenced at {path!r}, which is not "
                                          f"usable: {e}; {_remedy(key)}") from e
            if key in overrides:  # the key would otherwise follow the new folder's name
                entry.update(path=path, name=key)
                if entry.get("tokenizer") and not Path(entry["tokenizer"]).expanduser().is_dir():
                    entry["tokenizer"] = ""  # the old separate tokenizer is gone too: read the given folder's
            if "fingerprint" in record:
                found = from_dict(TextEncoderConfig, entry, prefix=f"model.text.encoders[{i}]").fingerprint()
                if found != record["fingerprint"]:
                    raise TextEncoderNotFound(
                        f"{folder}: its text encoder {key!r} at {path!r} changed since the export (other weights, "
                        f"tokenizer or settings: fingerprint {found[:12]}, exported with "
                        f"{record['fingerprint'][:12]}); "
                        f"the model was trained on the original: {_remedy(key)}")
        return recipe

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

    def encode(self, media: Tensor) -> Tensor:
        """Media (B, C, ...) -> normalised latents (the posterior means, as sampling's starting points want);
        without a tokenizer the media themselves."""
        tok = self.tokenizer
        if tok is None:
            return media
        with torch.no_grad():
            return tok.normalize(tok.encode(media.to(next(tok.parameters()).device)).mean)

    def decode(self, z: Tensor, like_shape: Sequence[int] | None = None) -> Tensor:
        """Normalised latents (B, C_lat, ...) -> media (B, C, ...), cropped to like_shape's trailing axes
        (B, C, ...) where the tokenizer pads; without a tokenizer z is the media already."""
        tok = self.tokenizer
        return z if tok is None else tok.decode(tok.denormalize(z), like_shape)
