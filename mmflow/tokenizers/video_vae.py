"""Causal 3-D convolutional video VAE: (B, 3, T, H, W) in [-1, 1] <-> latents (B, C_lat, T', H', W').

Time and space are compressed (default 4x and 8x) with causal convolutions (mmflow.tokenizers.causal3d),
so the first frame is encoded on its own and an image is a 1-frame video: T = 1 + 4k frames map to
1 + k latent frames (the CogVideoX / MovieGen TAE layout). Latent frame j sees frames <= 4j only.

Long clips are encoded and decoded in temporal chunks that carry each conv's last frames to the next
chunk, so chunked results equal whole-clip results (to float rounding) while memory stays bounded by
the chunk length. Large frames can also be cut in space (`tile_latent_size`, mmflow.tokenizers.tiling):
overlapping tiles, blended; approximate, with memory bounded by the tile. A clip whose length is not
1 + 4k is an error unless `pad_frames` is set: then the last frame is repeated up to the next valid
length and decoding crops back.

    vae = VideoVAE(VideoVAEConfig())
    post = vae.encode(video)                       # DiagonalGaussian over (B, 16, 1 + (T-1)/4, H/8, W/8)
    video_hat = vae.decode(post.mode(), like_shape=video.shape)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mmflow.config import check, preset_config
from mmflow.model_io import register_model
from mmflow.tokenizers.base import DiagonalGaussian, Tokenizer, check_latent_stats
from mmflow.tokenizers.causal3d import (
    CausalConv3d,
    Downsample3d,
    FrameGroupNorm,
    ResBlock3d,
    Upsample3d,
    streaming,
)
from mmflow.tokenizers.tiling import (
    resolve_tiling, tile_overlap_field, tile_size_field, tiled_map, validate_tiling,
)

__all__ = ["VIDEO_VAE_PRESETS", "VideoVAE", "VideoVAEConfig", "nearest_frame_counts", "video_vae_config"]


def _field(default: Any, doc: str = "", **bounds: Any) -> Any:
    return field(default=default, metadata={"help": doc, **bounds})


@dataclass
class VideoVAEConfig:
    in_channels: int = _field(3, "video channels (RGB)", min=1)
    latent_channels: int = _field(16, "latent channels", min=1)
    block_out_channels: tuple[int, ...] = _field((128, 256, 256, 512), "width per level; each level after "
                                                 "the first halves H and W (8x for 4 levels)", min=1)
    temporal_downsample: tuple[bool, ...] = _field((True, True, False), "per downsampling (len = levels - 1): "
                                                   "does it also halve time (T = 1 + 2m -> 1 + m)")
    temporal_kernel: tuple[int, ...] = _field((3,), "temporal kernel (1 or 3) of the convs per level, first "
                                              "(full resolution) to last; one entry = every level; 1 = per-frame "
                                              "convs (time-halving convs always span 3 frames)")
    layers_per_block: int = _field(2, "residual blocks per encoder level (decoder: one more)", min=1)
    norm_num_groups: int = _field(32, "GroupNorm groups (applied per frame); must divide every width", min=1)
    init_posterior_std: float = _field(0.1, "posterior std the untrained encoder starts from (the logvar bias "
                                            "of its output conv); 1.0 = the prior's", min=0.0, min_exclusive=True)
    temporal_pad: Literal["replicate", "zeros"] = _field("replicate", "past-side padding of causal convs")
    pad_frames: bool = _field(False, "T that is not 1 + k*temporal_factor: repeat the last frame (else error)")
    encode_chunk_frames: int = _field(16, "frames per encoder chunk after the first (which has one more); "
                                          "multiple of the temporal factor; 0 = whole clip", min=0)
    decode_chunk_latents: int = _field(4, "latent frames per decoder chunk after the first (one more); "
                                          "0 = whole clip", min=0)
    tile_latent_size: int = tile_size_field()  # spatial tiling of encode/decode (mmflow.tokenizers.tiling)
    tile_overlap: int | None = tile_overlap_field()
    latent_shift: list[float] | None = _field(None, "per-channel latent mean (None until measured)")
    latent_scale: list[float] | None = _field(None, "per-channel 1/std (None until measured)")

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def kernel_t(self, level: int) -> int:
        """Temporal kernel of level `level` (0 = full resolution)."""
        return self.temporal_kernel[level if len(self.temporal_kernel) > 1 else 0]

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(bool(t) for t in self.temporal_downsample)

    def validate(self) -> None:
        n = len(self.block_out_channels)
        check(n >= 1, "block_out_channels", "needs at least one level")
        check(len(self.temporal_downsample) == n - 1, "temporal_downsample",
              f"needs one entry per downsampling ({n - 1} for {n} levels), got {len(self.temporal_downsample)}")
        check(len(self.temporal_kernel) in (1, n), "temporal_kernel",
              f"needs one entry or one per level ({n}), got {len(self.temporal_kernel)}")
        check(all(k in (1, 3) for k in self.temporal_kernel), "temporal_kernel",
              f"entries must be 1 or 3, got {list(self.temporal_kernel)}")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        check(not bad, "norm_num_groups", f"{self.norm_num_groups} does not divide block_out_channels {bad}")
        check(self.encode_chunk_frames % self.temporal_factor == 0, "encode_chunk_frames",
              f"must be a multiple of the temporal factor {self.temporal_factor}, got {self.encode_chunk_frames}")
        validate_tiling(self.tile_latent_size, self.tile_overlap)
        check_latent_stats(self.latent_shift, self.latent_scale, self.latent_channels)


# Named sizes; other fields come from the caller. All compress time 4x; "cogvideox" has CogVideoX's widths and
# depth (8x space), not its weights (its blocks differ in detail).
VIDEO_VAE_PRESETS: dict[str, dict[str, Any]] = {
    "test": {"block_out_channels": (8, 16, 16), "temporal_downsample": (True, True), "layers_per_block": 1,
             "norm_num_groups": 4, "latent_channels": 4},  # 4x space, unit tests
    "tiny": {"block_out_channels": (32, 64, 64, 64), "layers_per_block": 1, "norm_num_groups": 8},  # CPU smoke runs
    "small": {"block_out_channels": (64, 128, 256, 256), "layers_per_block": 2},
    "cogvideox": {"block_out_channels": (128, 256, 256, 512), "layers_per_block": 3, "latent_channels": 16},
}


def video_vae_config(preset: str, **overrides: Any) -> VideoVAEConfig:
    """VideoVAEConfig of a named preset (VIDEO_VAE_PRESETS) with `overrides` applied, validated."""
    return preset_config(VideoVAEConfig, VIDEO_VAE_PRESETS, preset, "video VAE", **overrides)


class VideoEncoder(nn.Module):
    """(B, C, T, H, W) -> posterior parameters (B, 2*C_lat, 1 + (T-1)/tf, H/sf, W/sf)."""

    def __init__(self, cfg: VideoVAEConfig) -> None:
        super().__init__()
        ch, g, pad, kt = cfg.block_out_channels, cfg.norm_num_groups, cfg.temporal_pad, cfg.kernel_t
        last = len(ch) - 1
        self.conv_in = CausalConv3d(cfg.in_channels, ch[0], (kt(0), 3, 3), pad_mode=pad)
        self.levels = nn.ModuleList()
        c_prev = ch[0]
        for i, c in enumerate(ch):
            level = nn.Sequential(*[ResBlock3d(c_prev if j == 0 else c, c, g, pad, kt(i))
                                    for j in range(cfg.layers_per_block)])
            if i < last:
                level.append(Downsample3d(c, bool(cfg.temporal_downsample[i]), pad, kt(i + 1)))
            self.levels.append(level)
            c_prev = c
        self.mid = nn.Sequential(ResBlock3d(c_prev, c_prev, g, pad, kt(last)), ResBlock3d(c_prev, c_prev, g, pad, kt(last)))
        self.norm_out = FrameGroupNorm(g, c_prev, eps=1e-6)
        self.conv_out = CausalConv3d(c_prev, 2 * cfg.latent_channels, (kt(last), 3, 3), pad_mode=pad)
        # Noise as large as the prior drowns an untrained encoder's small means: the decoder then learns the
        # data's mean clip and ignores its input (posterior collapse, seen on emoji_video64).
        nn.init.constant_(self.conv_out.conv.bias[cfg.latent_channels:], 2 * math.log(cfg.init_posterior_std))

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)  # (B, ch0, T, H, W)
        for level in self.levels:
            h = level(h)  # (B, ch_i, T_i, H_i, W_i)
        h = self.mid(h)
        return self.conv_out(nn.functional.silu(self.norm_out(h)))  # (B, 2*C_lat, T', H', W')


class VideoDecoder(nn.Module):
    """Raw latents (B, C_lat, T', H', W') -> video (B, C, 1 + (T'-1)*tf, H'*sf, W'*sf)."""

    def __init__(self, cfg: VideoVAEConfig) -> None:
        super().__init__()
        ch, g, pad = list(reversed(cfg.block_out_channels)), cfg.norm_num_groups, cfg.temporal_pad
        time_up = list(reversed([bool(t) for t in cfg.temporal_downsample]))
        last = len(ch) - 1

        def kt(i: int) -> int:  # decoder level i is encoder level last - i
            return cfg.kernel_t(last - i)

        self.conv_in = CausalConv3d(cfg.latent_channels, ch[0], (kt(0), 3, 3), pad_mode=pad)
        self.mid = nn.Sequential(ResBlock3d(ch[0], ch[0], g, pad, kt(0)), ResBlock3d(ch[0], ch[0], g, pad, kt(0)))
        self.levels = nn.ModuleList()
        c_prev = ch[0]
        for i, c in enumerate(ch):
            level = nn.Sequential(*[ResBlock3d(c_prev if j == 0 else c, c, g, pad, kt(i))
                                    for j in range(cfg.layers_per_block + 1)])
            if i < last:
                level.append(Upsample3d(c, time_up[i], pad, kt(i + 1)))
            self.levels.append(level)
            c_prev = c
        self.norm_out = FrameGroupNorm(g, c_prev, eps=1e-6)
        self.conv_out = CausalConv3d(c_prev, cfg.in_channels, (kt(last), 3, 3), pad_mode=pad)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))  # (B, ch_last, T', H', W')
        for level in self.levels:
            h = level(h)
        return self.conv_out(nn.functional.silu(self.norm_out(h)))  # (B, C, T, H, W)


def nearest_frame_counts(num_frames: int, temporal_factor: int) -> tuple[int, int]:
    """The valid clip lengths (1 + k * temporal_factor) nearest `num_frames` >= 1 from below and above
    (both `num_frames` when it is valid)."""
    below = 1 + (num_frames - 1) // temporal_factor * temporal_factor
    return below, below if below == num_frames else below + temporal_factor


def _chunks(length: int, first: int, rest: int) -> list[tuple[int, int]]:
    """[start, end) bounds: one chunk of `first` items, then chunks of `rest` (the last may be shorter)."""
    bounds, start = [(0, min(first, length))], min(first, length)
    while start < length:
        bounds.append((start, min(start + rest, length)))
        start += rest
    return bounds


@register_model("video_vae")
class VideoVAE(Tokenizer):
    """Causal video VAE; see the module docstring. Register name: "video_vae"."""

    modality = "video"
    config_class = VideoVAEConfig

    def __init__(self, config: VideoVAEConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.encoder = VideoEncoder(config)
        self.decoder = VideoDecoder(config)

    # ---- sizes ----------------------------------------------------------------------------------

    def num_latent_frames(self, num_frames: int) -> int:
        """Latent frames for a clip of `num_frames` (after pad_frames, if enabled)."""
        tf = self.config.temporal_factor
        return 1 + math.ceil((num_frames - 1) / tf)

    def latent_size(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(T', H', W') of the latents of a (T, H, W) clip."""
        sf = self.config.spatial_factor
        return self.num_latent_frames(num_frames), height // sf, width // sf

    def last_layer_weight(self) -> nn.Parameter:
        """The decoder's output weight (for the adaptive adversarial weight in mmflow.tokenizers.losses)."""
        return self.decoder.conv_out.conv.weight

    # ---- input checks -------------------------------------------------------------------------

    def _check_video(self, x: Tensor) -> Tensor:
        """Validate (B, C, T, H, W) and, with pad_frames, repeat the last frame up to 1 + k*tf frames."""
        if x.ndim != 5:
            hint = "; for an image (B, C, H, W) use x.unsqueeze(2) (a 1-frame video)" if x.ndim == 4 else ""
            raise ValueError(f"VideoVAE expects video of shape (B, C, T, H, W), got {tuple(x.shape)}{hint}")
        self._check_clip_shape(tuple(x.shape[1:]))
        if not torch.isfinite(x).all():
            raise ValueError("VideoVAE: input video contains NaN or Inf values")
        tf = self.config.temporal_factor
        if (x.shape[2] - 1) % tf:  # pad_frames (else _check_clip_shape refused it)
            extra = tf - (x.shape[2] - 1) % tf
            x = torch.cat([x, x[:, :, -1:].expand(-1, -1, extra, -1, -1)], dim=2)  # (B, C, 1 + k*tf, H, W)
        return x

    def _check_clip_shape(self, shape: tuple[int, ...]) -> None:
        """One clip's (C, T, H, W): channels, spatial factor, and 1 + k*tf frames unless pad_frames."""
        cfg = self.config
        c, t, h, w = shape
        if c != cfg.in_channels:
            raise ValueError(f"VideoVAE expects {cfg.in_channels} channels (in_channels) at dim 1, got {c} "
                             f"in a clip shaped {shape}")
        sf, tf = cfg.spatial_factor, cfg.temporal_factor
        if h % sf or w % sf:
            raise ValueError(f"VideoVAE: height and width must be multiples of the spatial factor {sf}, got {h}x{w}")
        if (t - 1) % tf and not cfg.pad_frames:
            below, above = nearest_frame_counts(t, tf)
            raise ValueError(f"T={t} frames does not fit temporal factor {tf}: use 1 + {tf}k frames "
                             f"(the nearest: {below} or {above}) or set pad_frames: true")

    def latent_shape(self, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """Clip shape (C, T, H, W) -> latent shape (latent_channels, T', H/sf, W/sf), checked as encode checks it."""
        shape = tuple(shape)
        if len(shape) != 4:
            raise ValueError(f"expected a clip shape (C, T, H, W), got {shape}")
        self._check_clip_shape(shape)
        return (self.config.latent_channels, *self.latent_size(*shape[1:]))


    # ---- encode / decode ----------------------------------------------------------------------

    @staticmethod
    def _run_chunked(module: nn.Module, x: Tensor, chunk: int) -> Tensor:
        """module over x (B, C, T, h, w) in temporal chunks of 1 + chunk, then chunk frames, carrying causal state."""
        if chunk <= 0 or x.shape[2] <= 1 + chunk:
            return module(x)
        with streaming(module):
            return torch.cat([module(x[:, :, s:e]) for s, e in _chunks(x.shape[2], 1 + chunk, chunk)], dim=2)

    def encode(self, x: Tensor, chunk_frames: int | None = None, tile_latent_size: int | None = None,
               tile_overlap: int | None = None) -> DiagonalGaussian:
        """Video (B, C, T, H, W) in [-1, 1] -> posterior over raw latents (B, C_lat, 1 + (T-1)/tf, H/sf, W/sf).

        `chunk_frames` (default: config.encode_chunk_frames; 0 = whole clip) must be a multiple of the
        temporal factor; the first chunk holds one more frame (frame 0 is encoded on its own).
        `tile_latent_size`, `tile_overlap` (default: the config's; 0 = no tiling) tile space
        (mmflow.tokenizers.tiling); each tile is chunked in time.
        """
        x = self._check_video(x)
        chunk = self.config.encode_chunk_frames if chunk_frames is None else chunk_frames
        tf = self.config.temporal_factor
        if chunk % tf:
            raise ValueError(f"VideoVAE.encode: chunk_frames must be a multiple of the temporal factor {tf}, got {chunk}")
        tiling = resolve_tiling(self.config, tile_latent_size, tile_overlap)
        h = tiled_map(lambda tile: self._run_chunked(self.encoder, tile, chunk), x, tiling,
                      in_factor=self.config.spatial_factor)
        mean, logvar = h.chunk(2, dim=1)  # (B, C_lat, T', H', W') each
        return DiagonalGaussian(mean, logvar)

    def decode(self, z: Tensor, like_shape: Sequence[int] | None = None, chunk_latents: int | None = None,
               tile_latent_size: int | None = None, tile_overlap: int | None = None) -> Tensor:
        """Raw latents (B, C_lat, T', H', W') -> video (B, C, 1 + (T'-1)*tf, H'*sf, W'*sf).

        `like_shape` (B, C, T, H, W) crops the output to the clip's original T frames (after pad_frames);
        `chunk_latents` (default: config.decode_chunk_latents; 0 = whole) sets the chunk length;
        `tile_latent_size`, `tile_overlap` (default: the config's; 0 = no tiling) tile space.
        """
        self.check_latents(z, "T', H', W'")
        chunk = self.config.decode_chunk_latents if chunk_latents is None else chunk_latents
        tiling = resolve_tiling(self.config, tile_latent_size, tile_overlap)
        video = tiled_map(lambda tile: self._run_chunked(self.decoder, tile, chunk), z, tiling,
                          out_factor=self.config.spatial_factor)
        if like_shape is not None:
            num_frames, full, tf = like_shape[2], video.shape[2], self.config.temporal_factor
            if not full - tf < num_frames <= full:
                raise ValueError(f"VideoVAE.decode: num_frames={num_frames} does not match {z.shape[2]} latent frames "
                                 f"(they decode to {full} frames; valid: {max(1, full - tf + 1)}..{full})")
            video = video[:, :, :num_frames]
        return video
