"""Learning-rate schedule: linear warmup then cosine decay, a pure function of the optimizer step.

Being a function of the step alone (no scheduler object) makes resume exact and independent of the
number of processes.
"""

from __future__ import annotations

import math


def lr_at(step: int, base_lr: float, warmup_steps: int, max_steps: int, min_lr_ratio: float = 0.0) -> float:
    """LR for optimizer step `step` (0-based): warmup from base_lr/warmup to base_lr, then cosine to min."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return base_lr * (min_lr_ratio + (1.0 - min_lr_ratio) * cosine)
