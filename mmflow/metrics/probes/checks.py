"""Prompt checks: does each generated item show what its prompt asked? A registry of exact probes,
by name, that score media against their prompts (the compositional check of a synthetic set).

    prompt_check("shapes", images, prompts)     # {"colour": 0.97, "position": 0.99, "shape": 0.9, ...}
    prompt_check("shapes_video", clips, prompts)  # {"motion": 0.93, "colour": 0.98, ...}; clips (N, 3, T, H, W)
    prompt_check("emoji_video", clips, prompts)   # {"motion": 0.96, "background": 1.0, "all": 0.96}
    prompt_check("tones", clips, prompts)         # {"pitch": 1.0, "mode": 1.0, "tempo": 1.0, ...}; clips (N, 1, L)
    prompt_check("music", clips, prompts)         # {"key": 0.92, "mode": 0.94, "instrument": 0.98, "tempo": 0.72, ...}

Each returns accuracies in [0, 1] by attribute; an attribute no prompt asked about (the two-object ones when
every prompt has one object, say) is left out rather than NaN, so reports stay valid JSON. Evaluation logs
them as eval_<check>_<attribute>. `check_report` adds the per-item readings (what the probe read in each item,
which attributes were right), which `mmflow eval` writes into its report as "items".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

from mmflow.errors import UserError

__all__ = ["PROMPT_CHECKS", "CheckReport", "UnknownCheck", "check_report", "prompt_check"]


class UnknownCheck(UserError, ValueError):
    """A prompt check name nothing is registered under."""


def _accuracies(report: dict[str, Any], bookkeeping: tuple[str, ...]) -> dict[str, float]:
    """A probe's report without its per-item and count entries, and without the attributes nobody asked (NaN)."""
    return {k: float(v) for k, v in report.items() if k not in ("items", *bookkeeping) and not math.isnan(float(v))}


def _plain(value: Any) -> Any:
    """`value` with numpy scalars and arrays (and tuples) made JSON's own types, recursively."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


@dataclass
class CheckReport:
    """A prompt check's result: accuracies by attribute, and one reading per item (its prompt, what the probe
    read, which attributes were right; plain JSON types), in the media's order."""

    accuracies: dict[str, float]
    items: list[dict[str, Any]] = field(default_factory=list)


def _shapes(media: Tensor, prompts: Sequence[str]) -> tuple[dict[str, Any], tuple[str, ...]]:
    from mmflow.metrics.probes.shapes import score_shapes

    return score_shapes(media, prompts), ("n_one", "n_two")


def _shapes_video(media: Tensor, prompts: Sequence[str]) -> tuple[dict[str, Any], tuple[str, ...]]:
    from mmflow.metrics.probes.shapes_video import score_shapes_video

    return score_shapes_video(media, prompts), ("n",)  # media (N, 3, T, 64, 64): video items


def _emoji_video(media: Tensor, prompts: Sequence[str]) -> tuple[dict[str, Any], tuple[str, ...]]:
    from mmflow.metrics.probes.emoji_video_check import score_emoji_video

    return score_emoji_video(media, prompts), ("n",)  # media (N, 3, T, H, W): resampled to 16x64x64


def _tones(media: Tensor, prompts: Sequence[str]) -> tuple[dict[str, Any], tuple[str, ...]]:
    from mmflow.metrics.probes.tones import score_tones

    return score_tones(media, prompts), ("n", "n_mode")  # media (N, 1, L) audio at 16 kHz


def _music(media: Tensor, prompts: Sequence[str]) -> tuple[dict[str, Any], tuple[str, ...]]:
    from mmflow.metrics.probes.music_check import score_music

    return score_music(media, prompts), ("n",)  # media (N, 1, L) audio at 16 kHz (music16k melodies)


# name -> scorer: (the probe's whole report, its bookkeeping keys that are counts, not accuracies)
PROMPT_CHECKS: dict[str, Callable[[Tensor, Sequence[str]], tuple[dict[str, Any], tuple[str, ...]]]] = {
    "shapes": _shapes, "shapes_video": _shapes_video, "emoji_video": _emoji_video, "tones": _tones, "music": _music}


def check_report(name: str, media: Tensor, prompts: Sequence[str]) -> CheckReport:
    """The check `name` on media (N, ...) in [-1, 1] against their N prompts: accuracies and per-item readings."""
    if name not in PROMPT_CHECKS:
        raise UnknownCheck(f"unknown prompt check {name!r}; known: {', '.join(sorted(PROMPT_CHECKS))}")
    report, bookkeeping = PROMPT_CHECKS[name](media, prompts)
    return CheckReport(_accuracies(report, bookkeeping), _plain(report.get("items", [])))


def prompt_check(name: str, media: Tensor, prompts: Sequence[str]) -> dict[str, float]:
    """Accuracies of the check `name` on media (N, ...) in [-1, 1] against their N prompts."""
    return check_report(name, media, prompts).accuracies
