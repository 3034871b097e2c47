"""How straight a text-to-media model's sampling paths are (mmflow/flow/reflow.py's measure: the mean squared
deviation of the velocity from the chord x1 - x0 along the Euler path, over the chord's; 0 = straight lines,
which one Euler step integrates exactly), for a teacher and its reflow / few-step students side by side, on the
same noises and prompts. Each model at its own recipe's guidance unless --guidance is given (a reflow student's
recipe samples at 1: its teacher's guidance is in its pairs).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/straightness.py checkpoints/shapes_t2i runs/reflow_shapes_t2i \\
        --prompts data/shapes/test --rows 64 --steps 32
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mmflow.flow.reflow import straightness
from mmflow.pipeline import FlowPipeline
from mmflow.sampling.guidance import cfg_velocity


def prompts_of(source: str, rows: int) -> list[str]:
    """`rows` prompts, cycled: a folder's metadata.jsonl captions, or a text file's lines."""
    path = Path(source)
    if path.is_dir():
        lines = [json.loads(line)["text"] for line in (path / "metadata.jsonl").read_text().splitlines() if line.strip()]
    else:
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise SystemExit(f"{source}: no prompts")
    return [lines[i % len(lines)] for i in range(rows)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", help="text-to-media runs, checkpoints or exported folders")
    p.add_argument("--prompts", required=True, help="a folder with metadata.jsonl, or a file of prompts")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--steps", type=int, default=32, help="Euler steps along which the velocity is read")
    p.add_argument("--guidance", type=float, default=None, help="one guidance for all (default: each recipe's)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_grad_enabled(False)
    prompts = prompts_of(args.prompts, args.rows)
    print(f"{args.rows} rows ({len(set(prompts))} prompts of {args.prompts}), {args.steps} Euler steps")
    print("| model | guidance | straightness (relative) | absolute | rows' median |")
    print("|---|---|---|---|---|")
    for model in args.models:
        pipe = FlowPipeline.from_pretrained(model)
        w = pipe.sample_defaults.guidance if args.guidance is None else args.guidance
        layout = pipe.task.sample_layout()
        x0 = torch.stack([torch.randn(layout.x_shape, generator=torch.Generator().manual_seed(args.seed + i))
                          for i in range(args.rows)])  # (rows, *x_shape): row i from seed + i, as mmflow sample
        cond = pipe.task.input_condition(pipe.velocity, prompts, pipe.device)
        fn = cfg_velocity(pipe.velocity, cond, pipe.task.null_condition(pipe.velocity), w)
        s = straightness(fn, x0, args.steps)
        print(f"| {model} | {w:g} | {s.relative:.4f} | {s.absolute:.4f} | {float(s.per_row.median()):.4f} |",
              flush=True)


if __name__ == "__main__":
    main()
