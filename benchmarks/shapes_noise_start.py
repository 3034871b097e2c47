"""Where a shapes_t2i model loses an attribute: start from real latents noised to t0 and integrate to t = 1.

From pure noise (t0 = 0) this is ordinary sampling; from t0 near 1 it is a round trip. The t0 at which
shape accuracy comes back says which noise levels decide it, i.e. where training time should go
(flow.time_sampler.m). The real images are the held-out test split's own (each drawn for its prompt), so
the prompt and the start agree; --match picks a subset by caption words (e.g. "small star").

    python benchmarks/shapes_noise_start.py runs/exp/S4/model --real data/shapes/test --match small star \
        --t0 0 0.2 0.4 0.6
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmflow.metrics.probes.shapes import score_shapes
from mmflow.pipeline import FlowPipeline
from mmflow.sampling.guidance import cfg_velocity
from mmflow.sampling.solvers import ode_solve


def load_items(folder: Path, words: list[str], limit: int) -> tuple[torch.Tensor, list[str]]:
    """Images (N, 3, 64, 64) in [-1, 1] and captions of the one-object items whose caption holds every word."""
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["kind"] == "one" and all(w in r["text"].split() for w in words)][:limit]
    if not rows:
        raise SystemExit(f"no one-object item of {folder} has every word of {words}")
    images = [np.asarray(Image.open(folder / r["file_name"]).convert("RGB"), dtype=np.float32) for r in rows]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) / 127.5 - 1.0  # (N, 3, 64, 64)
    return x, [r["text"] for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--real", type=Path, default=Path("data/shapes/test"))
    ap.add_argument("--match", nargs="*", default=[], help="caption words every item must hold")
    ap.add_argument("--limit", type=int, default=64)
    ap.add_argument("--t0", type=float, nargs="+", default=[0.0, 0.2, 0.4, 0.6, 0.8])
    ap.add_argument("--steps", type=int, default=16, help="heun steps over the whole [0, 1] (fewer from t0)")
    ap.add_argument("--guidance", type=float, default=None, help="default: the model's")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    pipe = FlowPipeline.from_pretrained(args.model)
    enc = pipe.task.encoders
    images, prompts = load_items(args.real, args.match, args.limit)
    z = enc.encode(images)  # (N, C, h, w) normalised latents
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(args.seed))
    w = pipe.sample_config().guidance if args.guidance is None else args.guidance
    with torch.no_grad():
        cond = pipe.task.input_condition(pipe.velocity, prompts, pipe.device)
        fn = cfg_velocity(pipe.velocity, cond, pipe.task.null_condition(pipe.velocity), w)
        print(f"{args.model}: {len(prompts)} items matching {args.match or 'anything'}, guidance {w:g}, heun")
        print("t0     shape  all    colour position")
        for t0 in args.t0:
            x_t = pipe.path.sample(z, torch.full((len(z),), t0), eps).x_t
            if t0 < 1.0:
                grid = torch.linspace(t0, 1.0, max(1, round(args.steps * (1.0 - t0))) + 1)
                x_t = ode_solve(fn, x_t, grid, method="heun").x
            x = enc.decode(x_t, like_shape=images.shape).clamp(-1, 1)  # t0 = 1: the tokenizer's round trip
            r = score_shapes(x.float(), prompts)
            print(f"{t0:<6.2f} {r['shape']:.3f}  {r['all']:.3f}  {r['colour']:.3f}  {r['position']:.3f}")


if __name__ == "__main__":
    main()
