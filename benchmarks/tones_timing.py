"""Timing conditioning of a trained tones_t2m model (recipe run, not a timing): for several requested lengths,
the tones probe's accuracies on the held-out prompts and how silent the model keeps the rest of its window.

A timing model samples its whole training window (or more latents, for clips longer than it) told
seconds_total = the asked length, and the pipeline crops to that length. Here the window is decoded whole:

    accuracy     the tones probe (mmflow/metrics/probes/tones.py) on the clip as delivered (cropped), for clips of
                 at least its MIN_SECONDS (1.5 s); a 2 s clip holds only a few notes, so tempo and pattern are
                 harder to read there than at 4 s
    tail_db      the energy of the rest of the window after the asked length, relative to the clip's own
                 (10 log10 of mean power ratio; -60 dB is inaudible next to the clip; beyond the window, the
                 padding up to the next whole patch)
    end_db       the energy of the clip's last 50 ms relative to the whole clip (a clean ending fades or stops;
                 it is not a cut through a loud note)

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tones_timing.py checkpoints/tones_t2m --seconds 1 2 3 4 6 8
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mmflow.metrics.probes.tones import MIN_SECONDS, score_tones
from mmflow.pipeline import FlowPipeline

END_SECONDS = 0.05


def power_db(x: Tensor, ref: Tensor) -> float:
    """10 log10(mean power of x / mean power of ref) over a batch of (B, C, N) clips, per clip then averaged."""
    px = x.float().pow(2).flatten(1).mean(1)
    pr = ref.float().pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return float((10 * torch.log10(px.clamp_min(1e-12) / pr)).mean())


def whole_window(pipe: FlowPipeline) -> None:
    """Make the pipeline's timing layouts decode every sampled latent (the crop is done here instead)."""
    task = pipe.task
    timing_layout = task._timing_layout

    def layout(seconds: float):
        cropped = timing_layout(seconds)
        c, n_latents = cropped.media_shape[0], cropped.x_shape[-1]
        hop = task.sample_layout().media_shape[-1] // task.sample_layout().x_shape[-1]
        decode = lambda z: task.encoders.decode(z, like_shape=(1, c, n_latents * hop))  # noqa: E731
        return replace(cropped, decode=decode)

    task._timing_layout = layout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="run, checkpoint or exported folder of a tones_t2m model (model.timing: true)")
    p.add_argument("--test", default="data/tones/test", help="the held-out prompts (metadata.jsonl)")
    p.add_argument("--seconds", type=float, nargs="+", default=[1.0, 2.0, 3.0, 4.0, 6.0, 8.0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=40)
    p.add_argument("--limit", type=int, default=0, help="the first N prompts only (0: all)")
    args = p.parse_args()
    pipe = FlowPipeline.from_pretrained(args.model)
    if not pipe.task.recipe.model.timing:
        raise SystemExit(f"{args.model}: not a timing model (model.timing is false)")
    rate = pipe.task.recipe.data.sample_rate
    whole_window(pipe)
    rows = [json.loads(line) for line in (Path(args.test) / "metadata.jsonl").read_text().splitlines() if line.strip()]
    prompts = [r["text"] for r in rows][: args.limit or None]
    report = {"model": str(pipe.source), "prompts": len(prompts), "seed": args.seed, "rows": []}
    for seconds in args.seconds:
        out = pipe(prompts, seed=args.seed, seconds=seconds, batch_size=args.batch_size)
        n = round(seconds * rate)
        whole = out.media  # (B, C, latents * hop): the whole sampled window
        clip, tail = whole[..., :n], whole[..., n:]
        scores = score_tones(clip, prompts) if seconds >= MIN_SECONDS else {}  # too short for the probe
        row = {"seconds": seconds, **{k: round(float(v), 3) for k, v in scores.items()
                                      if k not in ("items", "n", "n_mode") and not math.isnan(float(v))},
               "tail_db": round(power_db(tail, clip), 1) if tail.shape[-1] else None,
               "tail_seconds": round(tail.shape[-1] / rate, 3),
               "end_db": round(power_db(clip[..., -round(END_SECONDS * rate):], clip), 1),
               "clip_rms": round(float(clip.float().pow(2).mean().sqrt()), 4)}
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps(report, indent=2, default=lambda v: float(np.asarray(v))))


if __name__ == "__main__":
    main()
