"""k-NN manifold metrics on features: improved precision/recall and density/coverage.

Each feature set is modelled as the union of balls around its points, the radius of a ball being the
distance to that point's k-th nearest neighbour in its own set:

- precision (Kynkaanniemi et al. 2019, k = 3): the share of fake points inside the real manifold
  (are the samples realistic?); recall: the share of real points inside the fake manifold (is the data's
  variety covered?).
- density (Naeem et al. 2020, k = 5): how many real balls a fake point falls in, / k, averaged; about 1
  when fake follows real, above 1 where fakes pile up in dense real regions; unbounded, unlike precision.
  coverage: the share of real points whose ball holds at least one fake point; robust to real outliers,
  which inflate recall's fake balls.

    report = manifold_report(real_feats, fake_feats)   # (N, D), (M, D) -> ManifoldReport
    report.precision, report.recall, report.density, report.coverage

Distances are computed in row chunks (`chunk` x the other set), so 10k x 10k needs ~40 MB per chunk
rather than the whole matrix. They use torch.cdist's matrix-product form in float32 after centring
both sets on the real mean: its rounding is ~1e-7 of |x|^2, far below the k-NN radii being compared. Ties count as inside (<=), as in the
Kynkaanniemi reference, within TIE_TOLERANCE: a fake point that duplicates a real one sits exactly on its
neighbours' radii, where the same distance computed in another chunk or thread layout can round either way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from mmflow.metrics.errors import FeatureMismatch, NotEnoughSamples

__all__ = ["ManifoldReport", "knn_radii", "manifold_report"]


@dataclass
class ManifoldReport:
    """Precision and recall (k = k_pr), density and coverage (k = k_dc) of fake against real features."""

    precision: float
    recall: float
    density: float
    coverage: float
    k_pr: int
    k_dc: int
    num_real: int
    num_fake: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

TIE_TOLERANCE = 1e-5  # relative: a distance within it of a radius is a tie, inside (float32 rounding ~1e-7)


def _as_features(x: Tensor | np.ndarray, name: str) -> Tensor:
    x = torch.as_tensor(x).detach()
    if x.ndim != 2:
        raise FeatureMismatch(f"{name} features must be (N, D), got shape {tuple(x.shape)}")
    return x.to(torch.float32)


def _check_count(x: Tensor, k: int, name: str, what: str) -> None:
    if x.shape[0] < k + 1:
        raise NotEnoughSamples(f"{what} with k = {k} needs at least {k + 1} {name} samples (each point's k-th "
                               f"nearest neighbour other than itself); the {name} set has {x.shape[0]}")


def knn_radii(x: Tensor | np.ndarray, ks: tuple[int, ...], chunk: int = 1024, name: str = "given") -> dict[int, Tensor]:
    """Distance of every point of x (N, D) to its k-th nearest neighbour in x other than itself, for each k
    in `ks` -> {k: (N,) float32}. Needs N >= max(ks) + 1 (NotEnoughSamples names the set by `name`)."""
    x = _as_features(x, name)
    kmax = max(ks)
    _check_count(x, kmax, name, "a k-NN radius")
    radii: dict[int, list[Tensor]] = {k: [] for k in ks}
    for xb in x.split(chunk):
        # the kmax + 1 smallest distances in each row; column 0 is the point itself (distance ~0)
        near = torch.cdist(xb, x).topk(kmax + 1, dim=1, largest=False).values  # (chunk, kmax + 1), ascending
        for k in radii:  # each k once, even when ks repeats one (k_pr == k_dc)
            radii[k].append(near[:, k])
    return {k: torch.cat(r) for k, r in radii.items()}


def manifold_report(real: Tensor | np.ndarray, fake: Tensor | np.ndarray, k_pr: int = 3, k_dc: int = 5,
                    chunk: int = 1024) -> ManifoldReport:
    """Precision/recall (k_pr) and density/coverage (k_dc) of fake (M, D) against real (N, D) features.

    NotEnoughSamples when a set has fewer than k + 1 points; FeatureMismatch when the widths differ.
    """
    real, fake = _as_features(real, "real"), _as_features(fake, "fake")
    if real.shape[1] != fake.shape[1]:
        raise FeatureMismatch(f"real features {tuple(real.shape)} and fake features {tuple(fake.shape)} differ in width")
    _check_count(real, k_pr, "real", "precision")
    _check_count(real, k_dc, "real", "density/coverage")
    _check_count(fake, k_pr, "fake", "recall")
    # Distances do not change under a shared shift; centring keeps the float32 matrix-product form of
    # cdist accurate when the features sit far from the origin (|x|^2 >> the radii^2 it subtracts to).
    centre = real.mean(dim=0)
    real, fake = real - centre, fake - centre
    real_r = {k: r * (1 + TIE_TOLERANCE) for k, r in knn_radii(real, (k_pr, k_dc), chunk, "real").items()}
    fake_r = knn_radii(fake, (k_pr,), chunk, "fake")[k_pr] * (1 + TIE_TOLERANCE)  # (M,)

    in_real = torch.zeros(fake.shape[0], dtype=torch.bool)  # fake j inside some real k_pr-ball (precision)
    in_fake = torch.zeros(real.shape[0], dtype=torch.bool)  # real i inside some fake k_pr-ball (recall)
    covered = torch.zeros(real.shape[0], dtype=torch.bool)  # real i's k_dc-ball holds a fake (coverage)
    density_hits = 0  # number of (fake j, real i) pairs with j inside i's k_dc-ball
    for start in range(0, fake.shape[0], chunk):
        d = torch.cdist(fake[start:start + chunk], real)  # (c, N)
        r_fake = fake_r[start:start + chunk, None]  # (c, 1)
        in_real[start:start + chunk] = (d <= real_r[k_pr]).any(dim=1)
        in_fake |= (d <= r_fake).any(dim=0)
        inside_dc = d <= real_r[k_dc]  # (c, N)
        density_hits += int(inside_dc.sum())
        covered |= inside_dc.any(dim=0)
    return ManifoldReport(
        precision=in_real.float().mean().item(),
        recall=in_fake.float().mean().item(),
        density=density_hits / (k_dc * fake.shape[0]),
        coverage=covered.float().mean().item(),
        k_pr=k_pr,
        k_dc=k_dc,
        num_real=real.shape[0],
        num_fake=fake.shape[0],
    )
