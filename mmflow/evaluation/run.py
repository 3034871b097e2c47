"""`mmflow eval`: score a folder of generated media, or sample a model and score its samples, in one go.

    mmflow eval --real data/emoji64 --fake runs/emoji/samples --metrics fd,precision_recall
    mmflow eval runs/emoji --prompts prompts.txt --num 1000 --real data/emoji64 --metrics fd,clip_score --clip clip/
    accelerate launch --multi_gpu --num_processes 2 -m mmflow eval runs/emoji --num 1000 --real data/emoji64

A model is sampled data-parallel: rank r samples a contiguous share of the N rows, row i from seed
seed + i (the pipeline's rule), so the samples are the same however many processes draw them; they are
gathered on the main process, which scores them. Without --prompts the rows cycle through the real
folder's captions (or, without captions, the model's default inputs).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from mmflow.config import to_dict
from mmflow.evaluation.config import EvalConfig
from mmflow.evaluation.evaluate import EvalReport, Evaluator, check_real
from mmflow.evaluation.media_sets import MediaSet, MediaSetError, load_media_set
from mmflow.utils.fs import write_json_atomic

__all__ = ["EvalResult", "default_cache_dir", "eval_accelerator", "evaluate_folders", "evaluate_model", "print_report",
           "shard"]

logger = logging.getLogger("mmflow.evaluation")


def default_cache_dir() -> Path:
    """Where real-side features are cached: $XDG_CACHE_HOME/mmflow/eval (default ~/.cache/mmflow/eval)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmflow" / "eval"


@dataclass
class EvalResult:
    report: EvalReport
    out: Path | None  # the JSON file written (main process), None elsewhere


def evaluate_folders(real: str | None, fake: str, cfg: EvalConfig, out: str | Path | None, modality: str | None = None,
                     cache_dir: str | Path | None = None, device: str | torch.device = "cpu",
                     progress: bool = True) -> EvalResult:
    """Score the generated folder `fake` against `real`; write the report as JSON to `out` (default
    <fake>/eval.json)."""
    fake_set = load_media_set(fake, modality)
    real_set = load_media_set(real, fake_set.modality) if real else None
    report = Evaluator(cfg, fake_set.modality, cache_dir, device, progress).score_sets(real_set, fake_set)
    path = Path(out) if out else Path(fake) / "eval.json"
    write_json_atomic(path, {"real": real, "fake": fake, **report.to_dict()})
    return EvalResult(report, path)


def shard(n: int, rank: int, world: int) -> tuple[int, int]:
    """[lo, hi) of the n rows that process `rank` of `world` samples: contiguous, sizes differing by one at most."""
    return rank * n // world, (rank + 1) * n // world


def _prompts(given: Sequence[str], real: MediaSet | None, pipe: Any) -> list[Any]:
    if given:
        return list(given)
    if real is not None and real.has_captions:
        return [c for c in real.captions if c]
    if pipe.task.input_kind in ("text", "label"):
        return list(pipe.info.get("default_inputs") or pipe.task.default_inputs())
    return [None]


def eval_accelerator(device: str | None) -> Any:
    """The Accelerator a model is sampled under: on the CPU when asked or without CUDA."""
    from accelerate import Accelerator

    return Accelerator(cpu=device == "cpu" or (device is None and not torch.cuda.is_available()))


def evaluate_model(path: str, cfg: EvalConfig, out: str | Path | None, prompts: Sequence[str] = (), num: int = 256,
                   real: str | None = None, cache_dir: str | Path | None = None, device: str | None = None,
                   sample_overrides: Sequence[str] = (), text_encoders: dict[str, str] | None = None,
                   use_ema: bool = True, progress: bool = True, accelerator: Any = None) -> EvalResult:
    """Sample `num` rows from the model at `path` (data-parallel under accelerate launch) and score them
    against `real`; the main process writes the JSON report to `out` (default <path>/eval.json).
    accelerator: the caller's (which then tears the processes down together); default eval_accelerator(device)."""
    from accelerate.utils import gather_object

    from mmflow.pipeline import FlowPipeline

    acc = accelerator if accelerator is not None else eval_accelerator(device)
    pipe = FlowPipeline.from_pretrained(path, use_ema=use_ema, device=acc.device, text_encoders=text_encoders)
    sample_cfg = pipe.sample_config(sample_overrides)
    layout = pipe.task.sample_layout()
    if layout.modality is None:
        raise MediaSetError(f"{path}: a {pipe.task.name} model makes points, not media; mmflow eval scores media")
    real_set = load_media_set(real, layout.modality) if real else None
    check_real(cfg, real_set)  # before sampling, which may take minutes
    inputs = _prompts(prompts, real_set, pipe)
    rows = [inputs[i % len(inputs)] for i in range(num)]
    lo, hi = shard(num, acc.process_index, acc.num_processes)
    labels = pipe.task.input_kind == "label"
    media = torch.zeros(0, *layout.media_shape)
    if hi > lo:
        mine = rows[lo:hi]
        output = pipe(None if labels or mine[0] is None else mine, labels=mine if labels else None,
                      sample_config=sample_cfg, seed=sample_cfg.seed + lo, batch_size=cfg.batch_size,
                      progress=progress and acc.is_main_process)
        media = output.media
    shares = gather_object([media])  # one tensor per process, in rank order = row order
    if not acc.is_main_process:
        return EvalResult(EvalReport({}, 0, 0, {}), None)
    media = torch.cat(shares)
    evaluator = Evaluator(cfg, layout.modality, cache_dir, acc.device, progress)
    report = evaluator.score_media(media, ["" if r is None else str(r) for r in rows], real_set, layout.sample_rate)
    target = Path(out) if out else Path(path) / "eval.json"
    write_json_atomic(target, {"model": str(pipe.source), "real": real, "num": num, "processes": acc.num_processes,
                               "sample": to_dict(sample_cfg), **report.to_dict()})
    return EvalResult(report, target)


def print_report(result: EvalResult) -> None:
    """The table and where the JSON went (main process only: others have no output)."""
    if result.out is None:
        return
    print(result.report.table())
    if result.report.skipped:
        print(f"skipped {len(result.report.skipped)} file(s) that did not decode, e.g. "
              f"{result.report.skipped[0][0]}: {result.report.skipped[0][1]}")
    print(f"report: {result.out}")
