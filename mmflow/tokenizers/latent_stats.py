"""Per-channel statistics of raw latents, so the flow model trains on roughly unit-variance latents.

After a tokenizer is trained, measure the mean and standard deviation of each latent channel over a
sample of the data and store shift = mean, scale = 1 / std in its config; `Tokenizer.encode_latents`
then returns (z - shift) * scale. The accumulator keeps float64 count / sum / sum of squares per
channel: sums add, so shards measured on different processes merge exactly (`merge`, or
`to_tensor` + an all-reduce of SUM + `from_tensor`, which `all_reduce` does with torch.distributed).

    moments = measure_latent_stats(vae, batches)          # batches of media (B, C, ...)
    moments = moments.all_reduce()                          # multi-process: sum over ranks
    apply_latent_stats(vae, *moments.shift_scale())         # writes vae.config.latent_shift/scale
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from mmflow.tokenizers.base import Tokenizer

__all__ = ["LatentMoments", "measure_latent_stats", "apply_latent_stats"]


@dataclass
class LatentMoments:
    """Streaming per-channel moments of latents (B, C, ...): count (elements per channel), sum, sum of squares.

    `total` and `total_sq` are float64 (C,) on the CPU. The std is the population std (divides by count).
    """

    count: int
    total: Tensor
    total_sq: Tensor

    @classmethod
    def zeros(cls, channels: int) -> LatentMoments:
        return cls(0, torch.zeros(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64))

    @property
    def channels(self) -> int:
        return self.total.numel()

    def update(self, z: Tensor) -> LatentMoments:
        """Add latents z (B, C, ...) (every element but the channel axis is one observation); returns self."""
        if z.ndim < 2 or z.shape[1] != self.channels:
            raise ValueError(f"latents must be (B, {self.channels}, ...), got shape {tuple(z.shape)}")
        zc = z.detach().to(torch.float64).transpose(0, 1).reshape(self.channels, -1)  # (C, N)
        if not torch.isfinite(zc).all():
            raise ValueError("latents contain NaN or Inf; refusing to fold them into the statistics")
        self.count += zc.shape[1]
        self.total += zc.sum(1).cpu()
        self.total_sq += zc.square().sum(1).cpu()
        return self

    def merge(self, other: LatentMoments) -> LatentMoments:
        """Moments of the union of both samples (a new object)."""
        if other.channels != self.channels:
            raise ValueError(f"cannot merge moments of {self.channels} and {other.channels} channels")
        return LatentMoments(self.count + other.count, self.total + other.total, self.total_sq + other.total_sq)

    def to_tensor(self) -> Tensor:
        """(3, C) float64: rows count (repeated), sum, sum of squares; sum it over processes, then `from_tensor`."""
        return torch.stack([torch.full_like(self.total, float(self.count)), self.total, self.total_sq])

    @classmethod
    def from_tensor(cls, t: Tensor) -> LatentMoments:
        if t.ndim != 2 or t.shape[0] != 3:
            raise ValueError(f"expected a (3, C) moments tensor, got shape {tuple(t.shape)}")
        t = t.detach().to("cpu", torch.float64)
        return cls(int(round(t[0, 0].item())), t[1].clone(), t[2].clone())

    def all_reduce(self, group: object | None = None) -> LatentMoments:
        """Sum over the processes of torch.distributed (a no-op copy without it). Every rank must call it."""
        if not (dist.is_available() and dist.is_initialized()):
            return self.merge(LatentMoments.zeros(self.channels))
        t = self.to_tensor()
        if dist.get_backend(group) == "nccl":  # NCCL reduces CUDA tensors only
            t = t.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        return LatentMoments.from_tensor(t)

    @property
    def mean(self) -> Tensor:
        """(C,) float64."""
        if self.count == 0:
            raise ValueError("no latents were measured (count is 0)")
        return self.total / self.count

    @property
    def std(self) -> Tensor:
        """(C,) float64 population standard deviation."""
        var = self.total_sq / max(self.count, 1) - self.mean.square()
        return var.clamp_min(0.0).sqrt()  # rounding can leave a tiny negative variance for constant channels

    def shift_scale(self) -> tuple[list[float], list[float]]:
        """(shift, scale) = (mean, 1 / std) per channel, for `apply_latent_stats`."""
        std = self.std
        dead = [i for i, s in enumerate(std.tolist()) if not s > 0]
        if dead:
            raise ValueError(f"latent channels {dead} have zero variance over {self.count} values per channel; "
                             "cannot normalise them (is the tokenizer trained? was the data constant?)")
        return self.mean.tolist(), (1.0 / std).tolist()


@torch.no_grad()
def measure_latent_stats(tokenizer: Tokenizer, batches: Iterable[Tensor | Mapping[str, Tensor]],
                           key: str | None = None, sample: bool = False, max_batches: int | None = None,
                           generator: torch.Generator | None = None) -> LatentMoments:
    """Moments of the tokenizer's raw latents over `batches` of media (B, C, ...) in [-1, 1].

    A batch may be a mapping (what a data loader yields), then `key` names the media tensor. Latents
    are posterior means, or posterior samples with `sample=True` (what the flow model trains on when
    it trains on samples). The media are moved to the tokenizer's device; this process only, see
    `LatentMoments.all_reduce` for the rest.
    """
    param = next(tokenizer.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    moments: LatentMoments | None = None
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        if isinstance(batch, Mapping):
            if key is None or key not in batch:
                raise KeyError(f"batch {i} is a mapping with keys {sorted(batch)}; pass key= naming the media")
            batch = batch[key]
        x = batch.to(device=device, dtype=param.dtype if param is not None else None)
        post = tokenizer.encode(x)
        z = post.sample(generator) if sample else post.mode()  # (B, C_lat, ...)
        if moments is None:
            moments = LatentMoments.zeros(z.shape[1])
        moments.update(z)
    if moments is None:
        raise ValueError("no batches to measure latent statistics on")
    return moments


def apply_latent_stats(tokenizer: Tokenizer, shift: Iterable[float], scale: Iterable[float]) -> None:
    """Write per-channel latent_shift / latent_scale (scale ~ 1/std) into `tokenizer.config`.

    Saving the tokenizer afterwards (mmflow.model_io.save_model) stores them in its config.json.
    """
    shift, scale = [float(v) for v in shift], [float(v) for v in scale]
    channels = tokenizer.config.latent_channels  # type: ignore[attr-defined]
    for name, values in (("shift", shift), ("scale", scale)):
        if len(values) != channels:
            raise ValueError(f"latent {name} has {len(values)} entries, the tokenizer has {channels} latent channels")
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"latent {name} must be finite, got {values}")
    if any(v == 0 for v in scale):
        raise ValueError(f"latent scale must be nonzero, got {scale}")
    tokenizer.config.latent_shift = shift  # type: ignore[attr-defined]
    tokenizer.config.latent_scale = scale  # type: ignore[attr-defined]
