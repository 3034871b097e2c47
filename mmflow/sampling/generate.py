"""The one sampling loop of every task: noise x0 and a condition -> samples (CFG, solver, decode, clamp).

Convention: t = 0 is noise, t = 1 is data. A task says only how user input becomes a condition and
how x0 is drawn (`seeded_noise`); everything after that is `generate`, for validation and for
`mmflow sample` alike.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from mmflow.errors import UserError
from mmflow.flow.cfg import Condition
from mmflow.flow.paths import GaussianPath
from mmflow.sampling.guidance import ModelFn, cfg_velocity
from mmflow.sampling.run import solve
from mmflow.sampling.solvers import SampleOutput, VelocityFn
from mmflow.utils.seeding import mix_seed

__all__ = ["NonFiniteSamples", "generate", "row_noise", "seeded_noise"]


class NonFiniteSamples(UserError, ArithmeticError):
    """Sampling produced NaN or inf: nothing is written (finite weights, so the sample settings overflow)."""


def row_noise(shape: tuple[int, ...], seeds: Iterable[int]) -> Tensor:
    """x0 (len(seeds), *shape) ~ N(0, I) on CPU (so every device draws the same noise), row i from seeds[i]
    alone: a sample's noise does not depend on the batch or the process that draws it."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


def seeded_noise(shape: tuple[int, ...], seed: int) -> tuple[Tensor, torch.Generator]:
    """x0 of `shape` (B, ...) with row i from seed + i (`row_noise`: the rule of FlowPipeline, so a run's
    validation and `mmflow eval` of its export draw the same x0 for the same seed), and a generator, seeded
    from `seed` apart from every row's, for what the task draws next (labels, the SDE's noise)."""
    return row_noise(shape[1:], range(seed, seed + shape[0])), torch.Generator().manual_seed(mix_seed(seed, 0))


def generate(velocity: ModelFn, x0: Tensor, cond: Condition | None, null_cond: Condition | None, sample_cfg: Any,
             path: GaussianPath, *, guidance: float | None = None, generator: torch.Generator | None = None,
             decode: Callable[[Tensor], Tensor] | None = None, clamp: bool = False, batch_size: int | None = None,
             return_trajectory: bool = False, check_finite: bool = True) -> SampleOutput:
    """Integrate noise x0 (B, ...) to data and return it as float32 on CPU (x: (B, ...) after decode).

    velocity is called as velocity(x, t, cond); with a condition, CFG at scale `guidance` (default
    sample_cfg.guidance) makes one call on 2B rows per solver stage ([null; cond]), or on B rows at
    guidance 1 (see cfg_velocity). cond and null_cond live on x0's device, each entry with batch B or
    1 (null_cond may have no batch dim); cond None samples unconditionally. batch_size splits the rows
    into chunks solved one after another (bounding memory; the generator's draws follow the chunks).
    decode (e.g. a tokenizer's latents -> media) runs per chunk on the device; clamp limits to [-1, 1].
    check_finite raises NonFiniteSamples at the first non-finite velocity or a non-finite result;
    validation turns it off so that a diverged model reports unknown metrics rather than stopping a run.
    """
    w = sample_cfg.guidance if guidance is None else float(guidance)
    settings = f"{sample_cfg.solver} x{sample_cfg.steps}, guidance={w:g}"

    def guided(c: Condition | None) -> VelocityFn:
        fn = (lambda x, t, **jump: velocity(x, t, None, **jump)) if c is None else cfg_velocity(velocity, c, null_cond, w)
        return _finite_velocity(fn, settings) if check_finite else fn

    b = x0.shape[0]
    step = batch_size or b
    outs: list[SampleOutput] = []
    media: list[Tensor] = []
    with torch.no_grad():
        for lo in range(0, b, step):
            fn = guided(None if cond is None else _rows(cond, lo, lo + step, b))
            out = solve(fn, x0[lo: lo + step], sample_cfg, path, generator=generator,
                        return_trajectory=return_trajectory)
            outs.append(out)
            media.append((out.x if decode is None else decode(out.x)).float().cpu())
    x = torch.cat(media) if len(media) > 1 else media[0]
    if check_finite and not bool(torch.isfinite(x).all()):  # before the clamp, which would hide an inf
        raise NonFiniteSamples(f"non-finite samples (NaN or inf){' after decoding' if decode else ''} ({settings})")
    if clamp:
        x = x.clamp(-1.0, 1.0)
    trajectory = None
    if return_trajectory:
        trajectory = torch.cat([o.trajectory for o in outs], dim=1) if len(outs) > 1 else outs[0].trajectory
    return SampleOutput(x, trajectory, outs[0].nfe)


def _finite_velocity(fn: VelocityFn, settings: str) -> VelocityFn:
    """fn, raising NonFiniteSamples as soon as a velocity holds NaN or inf (one reduction per stage)."""

    def checked(x: Tensor, t: Tensor, **jump: Tensor) -> Tensor:
        v = fn(x, t, **jump)  # jump: meanflow_solve's h
        if not bool(torch.isfinite(v).all()):
            raise NonFiniteSamples(f"a non-finite velocity (NaN or inf) at t={float(t.flatten()[0]):.3g} ({settings})")
        return v

    return checked


def _rows(cond: Condition, lo: int, hi: int, batch: int) -> Condition:
    """Rows lo:hi of each condition entry that has `batch` rows (a batch-1 entry is shared by all)."""
    if isinstance(cond, Tensor):
        return cond[lo:hi] if cond.shape[0] == batch else cond
    return {k: (v[lo:hi] if v.shape[0] == batch else v) for k, v in cond.items()}
