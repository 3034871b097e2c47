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

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from mmflow.data.bad_items import BadMedia
from mmflow.data.media_folder import DEFAULT_EXTENSIONS
from mmflow.errors import MissingInput
from mmflow.models.registry import CONFIG_NAME, load_model
from mmflow.tokenizers.base import Tokenizer
from mmflow.utils.media_io import write_media

__all__ = ["LATENT_FORMAT", "LATENT_KEY", "decode_files", "encode_files", "load_tokenizer", "read_media",
           "resolve_tokenizer_dir", "write_media"]

logger = logging.getLogger("mmflow.tokenizers")

LATENT_KEY = "latents"
LATENT_FORMAT = "mmflow-latents"  # metadata["format"] of a latent file
MODALITY = {"image_vae": "image", "video_vae": "video", "audio_vae": "audio"}
SUFFIX = {"image": ".png", "video": ".mp4", "audio": ".wav"}
DEFAULT_FPS = 8.0  # a video whose container gives no frame rate


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
    if getattr(model, "model_type", None) not in MODALITY:
        raise ValueError(f"{folder} holds a {getattr(model, 'model_type', type(model).__name__)!r} model, "
                         f"not a tokenizer ({', '.join(sorted(MODALITY))})")
    if getattr(model.config, "latent_scale", None) is None:
        logger.warning("%s has no latent statistics (latent_shift/latent_scale): latents are not normalised", folder)
    return model, folder  # type: ignore[return-value]


def _modality(tok: Tokenizer) -> str:
    return MODALITY[tok.model_type]  # type: ignore[attr-defined]


# ------------------------------------------------------------------ reading and writing media
def _pad_to(x: Tensor, multiples: Sequence[int]) -> Tensor:
    """Repeat the last element along the axes after the first of x (C, ...) up to the given multiples.

    Images (C, H, W) pad two axes, videos (C, T, H, W) three (replicate padding wants a batch axis)."""
    pads: list[int] = []
    for size, m in zip(reversed(x.shape[1:]), reversed(multiples)):
        pads += [0, -size % m]
    return F.pad(x[None], pads, mode="replicate")[0] if any(pads) else x


def read_media(path: str | os.PathLike, tokenizer: Tokenizer) -> tuple[Tensor, dict[str, str]]:
    """Read one media file for `tokenizer`: (media (C, ...) in [-1, 1], padded as encoding needs, metadata)."""
    path, modality = Path(path), _modality(tokenizer)
    try:
        if modality == "image":
            from mmflow.data.image_reader import open_image, pil_to_tensor

            x = pil_to_tensor(open_image(path))  # (3, H, W)
            meta = {"height": x.shape[1], "width": x.shape[2]}
            return _pad_to(x, (tokenizer.downsample_factor,) * 2), _strings(meta)  # type: ignore[attr-defined]
        if modality == "video":
            return _read_video(path, tokenizer)
        return _read_audio(path, tokenizer)
    except BadMedia as exc:
        raise ValueError(f"{path}: cannot read it as {modality} ({exc.reason})") from None
    except Exception as exc:  # noqa: BLE001  (soundfile / PyAV / decord raise their own types for files they cannot read)
        raise ValueError(f"{path}: cannot read it as {modality} ({type(exc).__name__}: {exc})") from None


def _strings(meta: dict[str, object]) -> dict[str, str]:
    return {k: str(v) for k, v in meta.items()}


def _read_video(path: Path, tokenizer: Tokenizer) -> tuple[Tensor, dict[str, str]]:
    from mmflow.data.bad_items import check_file
    from mmflow.data.video_reader import count_packets, get_video_backend

    check_file(path)
    vf = get_video_backend("auto").open(str(path))
    try:
        real = count_packets(path)  # containers may over-report; decode only the frames really present
        n = vf.num_frames if real is None else min(vf.num_frames, real) if vf.num_frames > 0 else real
        if not n:
            raise BadMedia("no frames", "0 decodable frames")
        frames, fps = vf.read(list(range(n))), vf.fps or DEFAULT_FPS  # (T, H, W, 3) uint8
    finally:
        vf.close()
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float() / 127.5 - 1.0  # (3, T, H, W)
    cfg = tokenizer.config
    t, h, w = x.shape[1:]
    tf, sf = cfg.temporal_factor, cfg.spatial_factor  # type: ignore[attr-defined]
    extra = -(t - 1) % tf
    if extra:
        x = torch.cat([x, x[:, -1:].expand(-1, extra, -1, -1)], dim=1)  # (3, 1 + k tf, H, W)
    return _pad_to(x, (1, sf, sf)), _strings({"num_frames": t, "height": h, "width": w, "fps": fps})


def _read_audio(path: Path, tokenizer: Tokenizer) -> tuple[Tensor, dict[str, str]]:
    import soundfile as sf

    from mmflow.tokenizers.audio_vae import prepare_audio

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (N, C_src)
    if data.shape[0] == 0:
        raise BadMedia("empty file", "0 audio samples")
    if not np.isfinite(data).all():
        raise BadMedia("non-finite audio", "NaN or Inf samples")
    cfg = tokenizer.config
    wave = prepare_audio(torch.from_numpy(np.ascontiguousarray(data.T)), rate, cfg.sample_rate, cfg.channels)  # type: ignore[attr-defined]
    meta = {"num_samples": wave.shape[-1], "sample_rate": cfg.sample_rate, "source_sample_rate": rate}  # type: ignore[attr-defined]
    return wave, _strings(meta)  # the audio VAE pads to its hop itself


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
    modality = _modality(tok)
    files = _gather(inputs, DEFAULT_EXTENSIONS[modality], f"{modality} files")
    out_dir = Path(out_dir)
    targets = _outputs(files, out_dir, ".safetensors")
    out_dir.mkdir(parents=True, exist_ok=True)
    for src, dst in zip(files, targets):
        x, meta = read_media(src, tok)
        z = tok.encode_latents(x[None].to(device))[0]  # (C_lat, ...) normalised posterior mean
        meta.update(format=LATENT_FORMAT, tokenizer=str(folder), model_type=tok.model_type,  # type: ignore[attr-defined]
                    modality=modality, source=str(src), latent_shape=json.dumps(list(z.shape)),
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
    modality = _modality(tok)
    files = _gather(latent_files, ("safetensors",), "latent files")
    out_dir = Path(out_dir)
    targets = _outputs(files, out_dir, SUFFIX[modality])
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
        if modality == "image":
            x = x[:, : int(meta["height"]), : int(meta["width"])]
            write_media(x, dst, modality)
        elif modality == "video":
            x = x[:, : int(meta["num_frames"]), : int(meta["height"]), : int(meta["width"])]
            write_media(x, dst, modality, fps=float(meta["fps"]))
        else:
            write_media(x[:, : int(meta["num_samples"])], dst, modality, sample_rate=int(meta["sample_rate"]))
    return targets
