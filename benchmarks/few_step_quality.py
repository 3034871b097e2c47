"""Few-step sampling against the teacher's many steps, on one held-out prompt set: for each `label=model
[sample overrides]` run, the velocity evaluations per sample (CFG's two rows count once, as the solvers count
them), the prompt check's accuracies and a Frechet distance in the given features, all from `mmflow eval`'s
evaluate_model with the same seeds (row i from seed i) for every run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/few_step_quality.py --real data/shapes/test --check shapes \\
        --features probe:shapes --num 190 \\
        --run "teacher 32=checkpoints/shapes_t2i" \\
        --run "teacher euler 2=checkpoints/shapes_t2i solver=euler steps=2 grid=shifted shift=3" \\
        --run "meanflow 2=runs/meanflow_shapes_t2i steps=2" --run "reflow 2=runs/reflow_shapes_t2i steps=2"
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

from mmflow.evaluation.config import EvalConfig
from mmflow.evaluation.run import evaluate_model

SOLVER_EVALS = {"euler": 1, "meanflow": 1, "midpoint": 2, "heun": 2, "rk4": 4, "sde": 1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", action="append", required=True, help='"label=model [key=value ...]" (sample overrides)')
    p.add_argument("--real", required=True, help="held-out media with captions: the prompts and the FD's real side")
    p.add_argument("--check", default=None, help="a prompt check (shapes, tones, music, ...)")
    p.add_argument("--features", default="auto", help="the FD's features (e.g. probe:shapes)")
    p.add_argument("--num", type=int, default=190)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out-dir", default="runs/few_step_quality",
                   help="each run's eval report (<i>.json) and all rows (rows.json); never the model folders")
    args = p.parse_args()
    cfg = EvalConfig(metrics=["fd"], features=args.features, check=args.check, batch_size=args.batch_size)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in args.run:
        label, _, rest = spec.partition("=")
        model, *overrides = shlex.split(rest)
        t0 = time.perf_counter()
        result = evaluate_model(model, cfg, out=out / f"{len(rows)}.json", num=args.num, real=args.real,
                                sample_overrides=overrides, progress=False)
        seconds = time.perf_counter() - t0
        report = json.loads(result.out.read_text()) if result.out else {}
        sample = report.get("sample", {})
        nfe = SOLVER_EVALS.get(sample.get("solver"), 0) * int(sample.get("steps", 0))
        row = {"run": label.strip(), "model": model, "overrides": overrides, "nfe": nfe, "seconds": round(seconds, 1),
               **{k: round(v, 4) for k, v in result.report.metrics.items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = sorted({k for r in rows for k in r if k not in ("run", "model", "overrides", "seconds", "nfe")})
    print("\n| run | NFE | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for r in rows:
        print(f"| {r['run']} | {r['nfe']} | " + " | ".join(f"{r.get(k, float('nan')):.3f}" for k in keys) + " |")
    (out / "rows.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
