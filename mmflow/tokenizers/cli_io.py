"""`mmflow encode` / `mmflow decode`: media files <-> latent files, with a trained tokenizer.

    written = encode_files("runs/tokenizer_image_f8", ["photos/", "cat.png"], "latents/")  # one .safetensors each
    decode_files("runs/tokenizer_image_f8", written, "decoded/")                           # .png / .mp4 / .wav

A latent file holds one tensor "latents" (C_lat, ...) without a batch axis: the tokenizer's normalised
latents (posterior mean, (z - latent_shift) * latent_scale), what the flow model trains on. Its
safetensors metadata (strings) name the tokenizer and keep what decoding needs to give the original
size back: images are padded (edge pixels repeated) to a multiple of the downsampling factor, videos
also in time (last frame repeated) to 1 + k * temporal factor, audio to a multiple of the hop; decoding
crops to the stored size. Audio is resampled to the tokenizer's rate and mixed to its channel count.
Writers: PNG (Pillow), MP4 (PyAV, H.264 yuv420p; odd sides get one repeated edge row/column), WAV
(soundfile, 16-bit PCM).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

import mmflow.builtin_models  # noqa: F401  (a folder of any built-in type loads, then is refused by name)
from mmflow.data.bad_items import BadMedia
from mmflow.errors import MissingInput
from mmflow.modalities import Modality, get_modality
from mmflow.model_io import CONFIG_NAME, load_model
from mmflow.tokenizers.base import Tokenizer

__all__ = ["LATENT_FORMAT", "LATENT_KEY", "decode_files", "encode_files", "load_tokenizer", "read_media",
           "resolve_tokenizer_dir"]

logger = logging.getLogger("mmflow.tokenizers")

LATENT_KEY = "latents"
LATENT_FORMAT = "mmflow-latents"  # metadata["format"] of a latent file


# ------------------------------------------------------------------ the tokenizer
def resolve_tokenizer_dir(path: str | os.PathLike, use_ema: bool = True) -> Path:
    """A tokenizer model folder (config.json + model.safetensors) from itself, a training run folder
    (its model/ export) or an export/checkpoint folder (its models/tokenizer[_ema])."""
    path = Path(path)
    if not path.exists():
        raise MissingInput(f"tokenizer {path} does not exist")
    if (path / CONFIG_NAME).exists():
        return path
    for root in (path / "model" / "models", path / "models"):
        names = ["tokenizer_ema", "tokenizer"] if use_ema else ["tokenizer"]
        for name in names:
            if (root / name / CONFIG_NAME).exists():
                return root / name
    raise MissingInput(f"{path}: not a tokenizer folder (no {CONFIG_NAME}, no model/models/tokenizer, "
                            f"no models/tokenizer); train one with `mmflow train tokenizers/<name>.yaml`")


def load_tokenizer(path: str | os.PathLike, device: str | torch.device = "cpu",
                   use_ema: bool = True) -> tuple[Tokenizer, Path]:
    """(tokenizer in eval mode, the model folder it came from)."""
    folder = resolve_tokenizer_dir(path, use_ema)
    model = load_model(folder, map_location=device).eval()
    if not isinstance(model, Tokenizer):
        raise ValueError(f"{folder} holds a {getattr(model, 'model_type', type(model).__name__)!r} model, "
                         f"not a tokenizer (an image, video or audio VAE)")
    if getattr(model.config, "latent_scale", None) is None:
        logger.warning("%s has no latent statistics (latent_shift/latent_scale): latents are not normalised", folder)
    return model, folder  # type: ignore[return-value]


def _spec(tok: Tokenizer) -> Modality:
    return get_modality(tok.modality)


# ------------------------------------------------------------------ reading media
def read_media(path: str | os.PathLike, tokenizer: Tokenizer) -> tuple[Tensor, dict[str, str]]:
    """Read one media file for `tokenizer`: (media (C, ...) in [-1, 1], padded as encoding needs, metadata)."""
    path, spec = Path(path), _spec(tokenizer)
    try:
        x, meta = spec.read_file(path, tokenizer.config)
    except BadMedia as exc:
        raise ValueError(f"{path}: cannot read it as {spec.name} ({exc.reason})") from None
    except Exception as exc:  # noqa: BLE001  (soundfile / PyAV / decord raise their own types for files they cannot read)
        raise ValueError(f"{path}: cannot read it as {spec.name} ({type(exc).__name__}: {exc})") from None
    return x, {k: str(v) for k, v in meta.items()}


# ------------------------------------------------------------------ encode / decode
def _gather(inputs: Sequence[str | os.PathLike], extensions: Sequence[str], what: str) -> list[Path]:
    """Files among `inputs`, folders searched recursively for `extensions`; errors name the bad input."""
    if not inputs:
        raise ValueError(f"no {what} given")
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower().lstrip(".") in extensions)
            if not found:
                raise MissingInput(f"{item}: no {what} ({', '.join(extensions)}) in this folder")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise MissingInput(f"{item} does not exist")
    return files


def _outputs(files: Sequence[Path], out_dir: Path, suffix: str) -> list[Path]:
    """out_dir / <stem><suffix> for each file; two inputs with the same stem are an error."""
    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen and seen[f.stem] != f:
            raise ValueError(f"{seen[f.stem]} and {f} would both be written as {out_dir / (f.stem + suffix)}; "
                             "encode them into different output folders")
        seen[f.stem] = f
    return [out_dir / f"{f.stem}{suffix}" for f in files]


@torch.no_grad()
def encode_files(tokenizer_dir: str | os.PathLike, inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                 device: str | torch.device = "cpu", use_ema: bool = True) -> list[Path]:
    """Encode media files (or folders of them) into out_dir/<stem>.safetensors; returns the files written."""
    tok, folder = load_tokenizer(tokenizer_dir, device, use_ema)
    spec = _spec(tok)
    files = _gather(inputs, spec.extensions, f"{spec.name} files")
    out_dir = Path(out_dir)
    targets = _outputs(files, out_dir, ".safetensors")
    out_dir.mkdir(parents=True, exist_ok=True)
    for src, dst in zip(files, targets):
        x, meta = read_media(src, tok)
        z = tok.encode_latents(x[None].to(device))[0]  # (C_lat, ...) normalised posterior mean
        meta.update(format=LATENT_FORMAT, tokenizer=str(folder), model_type=tok.model_type,  # type: ignore[attr-defined]
                    modality=spec.name, source=str(src), latent_shape=json.dumps(list(z.shape)),
                    normalized=str(getattr(tok.config, "latent_scale", None) is not None).lower())
        save_file({LATENT_KEY: z.float().contiguous().cpu()}, str(dst), metadata=meta)
    return targets


def _read_latents(path: Path) -> tuple[Tensor, dict[str, str]]:
    if not path.is_file():
        raise MissingInput(f"latent file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if LATENT_KEY not in f.keys():  # noqa: SIM118  (safe_open has no __contains__)
                raise ValueError(f"{path}: no {LATENT_KEY!r} tensor (has {sorted(f.keys())}); "
                                 "is this a file written by `mmflow encode`?")
            z = f.get_tensor(LATENT_KEY)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001  (safetensors raises its own error types on a damaged header)
        raise ValueError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    if meta.get("format") != LATENT_FORMAT:
        raise ValueError(f"{path}: metadata format is {meta.get('format')!r}, expected {LATENT_FORMAT!r} "
                         "(written by `mmflow encode`)")
    return z, meta


@torch.no_grad()
def decode_files(tokenizer_dir: str | os.PathLike, latent_files: Sequence[str | os.PathLike],
                 out_dir: str | os.PathLike, device: str | torch.device = "cpu", use_ema: bool = True) -> list[Path]:
    """Decode latent files written by `encode_files` into out_dir/<stem>.png|.mp4|.wav at their original size."""
    tok, folder = load_tokenizer(tokenizer_dir, device, use_ema)
    spec = _spec(tok)
    files = _gather(latent_files, ("safetensors",), "latent files")
    out_dir = Path(out_dir)
    targets = _outputs(files, out_dir, spec.suffix)
    for src, dst in zip(files, targets):
        z, meta = _read_latents(src)
        if meta.get("model_type") != tok.model_type:  # type: ignore[attr-defined]
            raise ValueError(f"{src}: latents of a {meta.get('model_type')!r} tokenizer ({meta.get('tokenizer')}), "
                             f"but {folder} is a {tok.model_type!r}")  # type: ignore[attr-defined]
        c = tok.config.latent_channels  # type: ignore[attr-defined]
        if z.shape[0] != c:
            raise ValueError(f"{src}: latents have {z.shape[0]} channels, the tokenizer {folder} has {c}")
        if meta.get("tokenizer") != str(folder):
            logger.info("%s was encoded by %s, decoding with %s", src, meta.get("tokenizer"), folder)
        x = tok.decode_latents(z[None].to(device, next(tok.parameters()).dtype))[0].float()
        x = x[(slice(None), *(slice(0, int(meta[key])) for key in spec.size_keys))]  # the size before padding
        fps, rate = meta.get("fps"), meta.get("sample_rate")
        spec.write(x, dst, fps=None if fps is None else float(fps), sample_rate=None if rate is None else int(rate))
    return targets
