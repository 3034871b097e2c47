"""Sample-quality distances. Low-dimensional point clouds (toy 2-D) for now."""

from mmflow.metrics.energy import energy_distance, mean_pairwise_distance
from mmflow.metrics.sliced import random_directions, sliced_wasserstein, wasserstein_1d
from mmflow.metrics.two_sample import TwoSampleReport, two_sample_report

__all__ = [
    "TwoSampleReport",
    "energy_distance",
    "mean_pairwise_distance",
    "random_directions",
    "sliced_wasserstein",
    "two_sample_report",
    "wasserstein_1d",
]
