"""Errors of the distribution metrics (Frechet distance, precision/recall, density/coverage, CLIP score)."""

from __future__ import annotations

from mmflow.errors import UserError

__all__ = ["FeatureMismatch", "NotEnoughSamples"]


class NotEnoughSamples(UserError, ValueError):
    """Too few feature vectors for the metric asked; the message says how many there are and how many it needs."""


class FeatureMismatch(UserError, ValueError):
    """Two feature sets (or statistics) that cannot be compared: wrong rank, different widths or
    different pair counts; the message names both shapes."""
