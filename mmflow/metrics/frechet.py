"""Frechet distance between two feature sets, each summarised by a Gaussian (mean, covariance, count).

    real = FeatureStats.from_features(real_feats, describe=extractor.describe())   # (N, D) -> stats
    real.save("cache/real.stats.safetensors")                                      # reused next time
    fd = frechet_distance(FeatureStats.load("cache/real.stats.safetensors"),
                          FeatureStats.from_features(fake_feats))

FD = ||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^1/2)    (FID when the features are Inception's).

The only hard term is Tr((S_a S_b)^1/2). pytorch-fid and clean-fid take scipy.linalg.sqrtm of the
non-symmetric product S_a S_b (a complex Schur decomposition; rounding leaves imaginary parts that are
thrown away, and a near-singular product needs an eps * I retry). torchmetrics and torch-fidelity (> 0.3)
sum sqrt(eigvals(S_a S_b)), still a non-symmetric eigenproblem with complex output. Here the same trace
comes from two SYMMETRIC eigenproblems: S_a S_b is similar to S_a^1/2 S_b S_a^1/2 (a PSD matrix), so

    Tr((S_a S_b)^1/2) = sum_i sqrt(lambda_i(S_a^1/2 S_b S_a^1/2)),   S_a^1/2 from eigh(S_a).

eigh / eigvalsh are backward stable, real, and their tiny negative eigenvalues (rounding on a PSD
matrix) are clamped to 0 before the square root, so a rank-deficient or ill-conditioned covariance
gives a finite, real answer with no retry; they are also several times cheaper than sqrtm's Schur
route (benchmarks/frechet_distance.py). Everything is float64.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmflow.errors import MissingInput, UserError
from mmflow.metrics.errors import FeatureMismatch, NotEnoughSamples
from mmflow.utils.fs import write_bytes_atomic

__all__ = ["BadStatsFile", "FeatureStats", "NotEnoughSamples", "frechet_distance", "trace_sqrt_product"]

STATS_FORMAT = "mmflow.feature_stats"
STATS_VERSION = "1"


class BadStatsFile(UserError, ValueError):
    """A saved statistics file that is not one: unreadable, or a tensor / metadata key missing or of the wrong shape."""


def _as_float64(x: Tensor | np.ndarray) -> Tensor:
    return torch.as_tensor(x).detach().to(torch.float64)


@dataclass
class FeatureStats:
    """Gaussian summary of N feature vectors: mean (D,), unbiased covariance (D, D) (divides by N - 1, as
    np.cov and pytorch-fid do), float64; `describe` records what the features came from (the extractor's
    describe() and the data), so a cache can tell whether saved statistics still apply."""

    mean: Tensor  # (D,) float64
    cov: Tensor  # (D, D) float64; zeros while count < 2
    count: int
    describe: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mean, self.cov = _as_float64(self.mean), _as_float64(self.cov)
        d = self.mean.shape[0] if self.mean.ndim == 1 else -1
        if self.cov.shape != (d, d):
            raise FeatureMismatch(f"FeatureStats: mean {tuple(self.mean.shape)} and cov {tuple(self.cov.shape)} "
                                  f"are not (D,) and (D, D)")
        if self.count < 0:
            raise ValueError(f"FeatureStats: count must be >= 0, got {self.count}")

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    @property
    def scatter(self) -> Tensor:
        """sum_i (x_i - mean)(x_i - mean)^T, (D, D): what merges add."""
        return self.cov * max(self.count - 1, 1)

    @classmethod
    def from_features(cls, x: Tensor | np.ndarray, describe: dict[str, Any] | None = None,
                      chunk: int = 4096) -> FeatureStats:
        """Statistics of features x (N, D), accumulated in float64 over row chunks of `chunk` (so a float32
        x is never copied whole to float64). N may be 0 or 1 (a rank's share); the distance checks N later."""
        x = torch.as_tensor(x).detach()
        if x.ndim != 2:
            raise FeatureMismatch(f"features must be (N, D), got shape {tuple(x.shape)}")
        n, d = x.shape
        mean = torch.zeros(d, dtype=torch.float64, device=x.device)
        scatter = torch.zeros(d, d, dtype=torch.float64, device=x.device)
        if n:
            for xb in x.split(chunk):
                mean += xb.to(torch.float64).sum(0)
            mean /= n
            # Centre before the product: sum x x^T - N mu mu^T would cancel catastrophically when |mu| >> std.
            for xb in x.split(chunk):
                xc = xb.to(torch.float64) - mean  # (chunk, D)
                scatter += xc.T @ xc
        return cls(mean, scatter / max(n - 1, 1), n, dict(describe or {}))

    def merge(self, other: FeatureStats) -> FeatureStats:
        """The statistics of both sets together, exactly as from_features of the concatenation (up to
        rounding), by Chan et al.'s pairwise update of mean and scatter (stable: no raw second moments).
        Data-parallel use: all_gather each rank's (mean, cov, count) and fold them with merge."""
        if other.dim != self.dim:
            raise FeatureMismatch(f"cannot merge statistics of {self.dim}-dim and {other.dim}-dim features")
        if self.describe and other.describe and self.describe != other.describe:
            raise FeatureMismatch(f"cannot merge statistics of different features: {self.describe} vs {other.describe}")
        n = self.count + other.count
        if n == 0:
            return FeatureStats(self.mean.clone(), self.cov.clone(), 0, dict(self.describe or other.describe))
        delta = other.mean.to(self.mean.device) - self.mean  # (D,)
        mean = self.mean + delta * (other.count / n)
        scatter = self.scatter + other.scatter.to(self.mean.device) + torch.outer(delta, delta) * (self.count * other.count / n)
        return FeatureStats(mean, scatter / max(n - 1, 1), n, dict(self.describe or other.describe))

    def save(self, path: str | os.PathLike) -> Path:
        """Write to a safetensors file (tensors `mean`, `cov`; metadata format, version, count, dim and
        describe as JSON), atomically: a temporary file in the same folder, then a rename."""
        from safetensors.torch import save

        path = Path(path)
        meta = {"format": STATS_FORMAT, "version": STATS_VERSION, "count": str(self.count), "dim": str(self.dim),
                "describe": json.dumps(self.describe, sort_keys=True)}
        write_bytes_atomic(path, save({"mean": self.mean.cpu().contiguous(), "cov": self.cov.cpu().contiguous()},
                                      metadata=meta))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStats:
        """Read what `save` wrote; BadStatsFile names the file and the key at fault."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise MissingInput(f"{path}: no such statistics file (FeatureStats.save writes one)")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own SafetensorError for a bad header
            raise BadStatsFile(f"{path}: not a readable safetensors file ({e})") from e
        if meta.get("format") != STATS_FORMAT:
            raise BadStatsFile(f"{path}: metadata 'format' is {meta.get('format')!r}, expected {STATS_FORMAT!r} "
                               f"(not a file written by FeatureStats.save)")
        for key in ("mean", "cov"):
            if key not in tensors:
                raise BadStatsFile(f"{path}: missing tensor {key!r}")
        try:
            count, dim = int(meta["count"]), int(meta["dim"])
            describe = json.loads(meta.get("describe", "{}"))
        except (KeyError, ValueError) as e:
            raise BadStatsFile(f"{path}: metadata 'count', 'dim' or 'describe' missing or malformed ({e})") from e
        if tensors["mean"].shape != (dim,) or tensors["cov"].shape != (dim, dim):
            raise BadStatsFile(f"{path}: tensors 'mean' {tuple(tensors['mean'].shape)} and 'cov' "
                               f"{tuple(tensors['cov'].shape)} do not match metadata dim {dim}")
        return cls(tensors["mean"], tensors["cov"], count, describe)


def trace_sqrt_product(a: Tensor, b: Tensor) -> Tensor:
    """Tr((A B)^1/2) for PSD A, B (D, D), as sum sqrt(eigvalsh(A^1/2 B A^1/2)); float64 scalar.

    Negative eigenvalues (rounding on PSD matrices) are clamped to 0 at both steps.
    """
    a, b = a.to(torch.float64), b.to(device=a.device, dtype=torch.float64)
    s, u = torch.linalg.eigh(a)  # a = u diag(s) u^T
    root_a = (u * s.clamp_min(0).sqrt()) @ u.T  # (D, D)
    m = root_a @ b @ root_a
    m = (m + m.T) / 2  # symmetric in exact arithmetic; average the rounding of the two triangles
    return torch.linalg.eigvalsh(m).clamp_min(0).sqrt().sum()


def _check_full_rank(stats: FeatureStats, name: str) -> None:
    need = stats.dim + 1
    if stats.count < need:
        raise NotEnoughSamples(
            f"Frechet distance: the {name} set has {stats.count} samples of {stats.dim}-dim features; a full-rank "
            f"{stats.dim}x{stats.dim} covariance needs at least {need} (the dimension + 1: centring removes one). "
            f"With fewer the covariance is singular and the distance biased: use at least {need} samples or "
            f"features with fewer dimensions (or pass allow_rank_deficient=True to compute it anyway)")


def frechet_distance(a: FeatureStats, b: FeatureStats, *, allow_rank_deficient: bool = False,
                     names: tuple[str, str] = ("first", "second")) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2), in float64 on a's device.

    Refuses (NotEnoughSamples, naming the set by `names`) when either set has fewer than dim + 1 samples,
    unless `allow_rank_deficient`. The result is clamped at 0: it is a squared distance, and rounding can
    put identical sets a hair below zero.
    """
    if a.dim != b.dim:
        raise FeatureMismatch(f"Frechet distance: the {names[0]} set has {a.dim}-dim features, the {names[1]} "
                              f"set {b.dim}-dim (were they made by different extractors?)")
    if not allow_rank_deficient:
        _check_full_rank(a, names[0])
        _check_full_rank(b, names[1])
    mean_b, cov_b = b.mean.to(a.mean.device), b.cov.to(a.mean.device)
    fd = (a.mean - mean_b).square().sum() + a.cov.trace() + cov_b.trace() - 2 * trace_sqrt_product(a.cov, cov_b)
    return max(float(fd), 0.0)
