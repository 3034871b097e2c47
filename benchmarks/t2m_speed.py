"""Seconds of audio a trained text-to-music model generates per second of wall time, at its recipe's sample
defaults (solver, steps, guidance: CFG's two branches per evaluation) and clip length, decode through its
tokenizer included (a timing, not a quality check):

    batch 1    the first prompts one clip per call (what `mmflow sample RUN --prompt ...` does)
    batch B    --num prompts in calls of --batch-size clips

Each after one warm-up call. Prompts are the first --num captions of --test.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/t2m_speed.py runs/tones_t2m
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mmflow.pipeline import FlowPipeline


def audio_per_second(pipe: FlowPipeline, prompts: list[str], batch_size: int) -> tuple[float, float]:
    """(seconds of audio made per second of wall time, wall seconds) for `prompts` in calls of batch_size."""
    start = time.perf_counter()
    out = pipe(prompts, seed=0, batch_size=batch_size)
    wall = time.perf_counter() - start
    rate = pipe.task.recipe.data.sample_rate
    return out.media.shape[0] * out.media.shape[-1] / rate / wall, wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="run, checkpoint or exported folder of a text-to-music model")
    p.add_argument("--test", default="data/tones/test", help="a folder whose metadata.jsonl captions are the prompts")
    p.add_argument("--num", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=40)
    args = p.parse_args()
    pipe = FlowPipeline.from_pretrained(args.model)
    lines = (Path(args.test) / "metadata.jsonl").read_text().splitlines()
    prompts = [json.loads(line)["text"] for line in lines if line.strip()][: args.num]
    pipe(prompts[:2], seed=0, batch_size=2)  # warm-up
    report = {"model": str(pipe.source), "threads": torch.get_num_threads()}
    for name, rows, batch in (("batch 1", prompts[:4], 1), (f"batch {args.batch_size}", prompts, args.batch_size)):
        speed, wall = audio_per_second(pipe, rows, batch)
        report[name] = {"clips": len(rows), "wall_s": round(wall, 2), "audio_seconds_per_second": round(speed, 2)}
        print(name, json.dumps(report[name]), flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
