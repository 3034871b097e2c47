"""Sample-quality distances (low-dimensional point clouds, toy 2-D), reconstruction quality (PSNR), and the
metrics on features: Frechet distance, precision/recall, density/coverage, CLIP score."""

from mmflow.metrics.clip_score import clip_score, clip_scores
from mmflow.metrics.energy import energy_distance, mean_pairwise_distance
from mmflow.metrics.errors import FeatureMismatch, NotEnoughSamples
from mmflow.metrics.frechet import BadStatsFile, FeatureStats, frechet_distance, trace_sqrt_product
from mmflow.metrics.manifold import ManifoldReport, knn_radii, manifold_report
from mmflow.metrics.reconstruction import psnr
from mmflow.metrics.sliced import random_directions, sliced_wasserstein, wasserstein_1d
from mmflow.metrics.two_sample import TwoSampleReport, two_sample_report

__all__ = [
    "BadStatsFile",
    "FeatureMismatch",
    "FeatureStats",
    "ManifoldReport",
    "NotEnoughSamples",
    "TwoSampleReport",
    "clip_score",
    "clip_scores",
    "energy_distance",
    "frechet_distance",
    "knn_radii",
    "manifold_report",
    "mean_pairwise_distance",
    "psnr",
    "random_directions",
    "sliced_wasserstein",
    "trace_sqrt_product",
    "two_sample_report",
    "wasserstein_1d",
]
