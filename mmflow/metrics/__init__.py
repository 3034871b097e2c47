"""Sample-quality distances (low-dimensional point clouds, toy 2-D) and reconstruction quality (PSNR)."""

from mmflow.metrics.energy import energy_distance, mean_pairwise_distance
from mmflow.metrics.reconstruction import psnr
from mmflow.metrics.sliced import random_directions, sliced_wasserstein, wasserstein_1d
from mmflow.metrics.two_sample import TwoSampleReport, two_sample_report

__all__ = [
    "TwoSampleReport",
    "energy_distance",
    "mean_pairwise_distance",
    "psnr",
    "random_directions",
    "sliced_wasserstein",
    "two_sample_report",
    "wasserstein_1d",
]
