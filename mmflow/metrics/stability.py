"""Small-noise validation (the seeds' debugging tip: "add small noise during validation, check if the
output changes wildly"): how far samples move when their initial noise moves a little.

A sampler is a map x0 -> output. Each item's noise is perturbed by s * n, n ~ N(0, I) from a fixed
generator (one direction n per item, shared by all scales s so that the scales trace one curve), and
for each scale the output change is measured per item as an RMS over its values:

    amplification(s) = mean_items RMS(f(x0 + s n) - f(x0)) / RMS(s n)

1 for the identity, c for x -> c x; a smooth sampler's amplification settles to a constant (its
local stretch) as s -> 0. An unstable one jumps: a jump of size J is crossed with probability ~ s and
then moves the output by J >> s, so an output with many jumps has amplification ~ 1/sqrt(s) (large,
and growing as s shrinks), and a rare jump shows as a large value carried by the few items that cross
it. The raw change RMS(f(x0 + s n) - f(x0)) is reported beside it.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["DEFAULT_SCALES", "noise_stability", "scale_name"]

DEFAULT_SCALES = (1e-3, 1e-2, 1e-1)


def scale_name(scale: float) -> str:
    """A scale as it appears in metric names: 1e-3 -> "1e-3", 0.05 -> "5e-2", 1.5e-2 -> "1.5e-2"."""
    mantissa, exponent = f"{scale:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _rms(x: Tensor) -> Tensor:
    """Per-item RMS (B,) of x (B, ...), in float64."""
    return x.reshape(x.shape[0], -1).double().pow(2).mean(dim=1).sqrt()


def noise_stability(sample_fn: Callable[[Tensor], Tensor], x0: Tensor, scales: Sequence[float] = DEFAULT_SCALES,
                    seed: int = 0, features: Callable[[Tensor], Tensor] | None = None) -> dict[str, float]:
    """Output change under perturbations of the noise x0 (B, ...) at each scale.

    sample_fn: noise (B, ...) -> outputs (B, ...) (media or latents; any shape with batch B). features:
    optional outputs -> (B, F) vectors (e.g. a probe classifier's), to measure the change there too.
    Returns, per scale s (named by `scale_name`):
      stability_amp_<s>:  mean over items of RMS(output change) / RMS(perturbation);
      stability_rms_<s>:  mean over items of RMS(output change);
    and with features:
      stability_feat_<s>: mean over items of RMS(feature change) / the features' RMS spread across the
                          unperturbed items (B >= 2): 0 unchanged, about 1.4 as far apart as two items.
    Non-finite outputs make the numbers NaN (validation writes them as unknown).
    """
    if not scales or any(not s > 0 for s in scales):
        raise ValueError(f"scales must be positive numbers, got {list(scales)}")
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(x0.shape, generator=g).to(x0.device, x0.dtype)  # (B, ...) one per item
    base = sample_fn(x0)
    if features is not None:
        base_feat = features(base).reshape(base.shape[0], -1).double()  # (B, F)
        spread = (base_feat - base_feat.mean(dim=0)).pow(2).mean().sqrt()  # the items' typical distance / sqrt 2
    out: dict[str, float] = {}
    for s in scales:
        name = scale_name(s)
        delta = s * direction  # (B, ...)
        moved = sample_fn(x0 + delta)
        change = _rms(moved.to(base.device) - base)  # (B,)
        out[f"stability_amp_{name}"] = float((change / _rms(delta).to(change.device)).mean())
        out[f"stability_rms_{name}"] = float(change.mean())
        if features is not None:
            feat_change = _rms(features(moved).reshape(base.shape[0], -1).to(base_feat) - base_feat)  # (B,)
            out[f"stability_feat_{name}"] = float(feat_change.mean() / spread)
    return out
