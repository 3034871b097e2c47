"""Sample quality against the data, relative to the data's own sampling noise.

A metric between model samples and data is hard to read on its own: with N points even two
independent draws of the data are at a non-zero distance. The report therefore puts each value
next to that floor (data vs. a second draw of the data, same N, same projections) and their ratio;
a ratio near 1 means the samples are as close to the data as the data is to itself.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import Tensor

from mmflow.metrics.energy import energy_distance
from mmflow.metrics.sliced import random_directions, sliced_wasserstein

__all__ = ["TwoSampleReport", "two_sample_report"]


def _ratio(value: float, floor: float) -> float:
    if floor > 0:
        return value / floor
    return math.inf if value > 0 else math.nan


@dataclass
class TwoSampleReport:
    """Metrics between samples and data, with the data-vs-data floor of each."""

    sliced_w1: float
    energy: float
    floor_sliced_w1: float
    floor_energy: float

    @property
    def ratio_sliced_w1(self) -> float:
        return _ratio(self.sliced_w1, self.floor_sliced_w1)

    @property
    def ratio_energy(self) -> float:
        return _ratio(self.energy, self.floor_energy)

    def to_dict(self) -> dict[str, float]:
        """Values, floors and ratios as plain floats (for logs / JSON)."""
        return {**asdict(self), "ratio_sliced_w1": self.ratio_sliced_w1, "ratio_energy": self.ratio_energy}

    def format(self) -> str:
        """One line, e.g. `sliced W1 0.0412 (floor 0.0125, 3.30x) | energy 0.00314 (floor 0.00021, 15.0x)`."""
        return (
            f"sliced W1 {self.sliced_w1:.4g} (floor {self.floor_sliced_w1:.4g}, {self.ratio_sliced_w1:.3g}x)"
            f" | energy {self.energy:.4g} (floor {self.floor_energy:.4g}, {self.ratio_energy:.3g}x)"
        )


def two_sample_report(
    samples: Tensor,
    data: Tensor | Sequence[Tensor],
    data_again: Tensor,
    n_projections: int = 256,
    seed: int = 0,
) -> TwoSampleReport:
    """Sliced W1 and energy distance of samples (N, d) vs data (N, d), and of data_again vs data.

    `data_again` is an independent draw from the same distribution as `data`; the same random
    directions (from `seed`) are used for the value and the floor, so they differ only in the sets.
    `data` may be several independent draws: value and floor are then averaged over them, which
    shrinks the estimator's own noise (one 10k-point draw moves a ratio by several percent).
    """
    references = [data] if isinstance(data, Tensor) else list(data)
    if not references:
        raise ValueError("two_sample_report needs at least one data set")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    theta = random_directions(n_projections, references[0].shape[1], gen, device=references[0].device)

    def mean_over_refs(metric, x: Tensor) -> float:
        return sum(float(metric(x, ref)) for ref in references) / len(references)

    sliced = lambda a, b: sliced_wasserstein(a, b, directions=theta)  # noqa: E731
    return TwoSampleReport(
        sliced_w1=mean_over_refs(sliced, samples),
        energy=mean_over_refs(energy_distance, samples),
        floor_sliced_w1=mean_over_refs(sliced, data_again),
        floor_energy=mean_over_refs(energy_distance, data_again),
    )
