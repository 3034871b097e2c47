"""Where a shapes model (shapes_t2i / shapes_t2v) loses an attribute: real latents noised to t0, integrated to 1.

From pure noise (t0 = 0) this is ordinary sampling; from t0 near 1 it is a round trip. The t0 at which
shape accuracy comes back says which noise levels decide it, i.e. where training time should go
(flow.time_sampler.m). The real images are the held-out test split's own (each drawn for its prompt), so
the prompt and the start agree; --match picks a subset by caption words (e.g. "small star", "rotating").
Image models are scored by the shapes probe (one-object items), video models by the moving-shapes probe.

    python benchmarks/shapes_noise_start.py runs/exp/S4/model --real data/shapes/test --match small star \
        --t0 0 0.2 0.4 0.6
    python benchmarks/shapes_noise_start.py checkpoints/shapes_t2v --real data/shapes_video/test --match rotating
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmflow.data.video_reader import get_video_backend, read_video
from mmflow.metrics.probes.shapes import score_shapes
from mmflow.metrics.probes.shapes_video import score_shapes_video
from mmflow.pipeline import FlowPipeline
from mmflow.sampling.guidance import cfg_velocity
from mmflow.sampling.solvers import ode_solve


def load_items(folder: Path, words: list[str], limit: int, video: bool) -> tuple[torch.Tensor, list[str]]:
    """Media (N, 3, [T,] 64, 64) in [-1, 1] and captions of the items whose caption holds every word
    (images: one-object items only; clips: their metadata's frame count from the first frame)."""
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if (video or r["kind"] == "one") and all(w in r["text"].split() for w in words)][:limit]
    if not rows:
        raise SystemExit(f"no item of {folder} fits (words {words})")
    if video:
        backend = get_video_backend("auto")
        media = [read_video(folder / r["file_name"], backend, 64, int(r["num_frames"]), start="start") for r in rows]
        return torch.stack(media), [r["text"] for r in rows]  # (N, 3, T, 64, 64)
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
    video = pipe.task.sample_layout().modality == "video"
    media, prompts = load_items(args.real, args.match, args.limit, video)
    score, attrs = (score_shapes_video, ("motion", "shape", "all", "colour")) if video else (
        score_shapes, ("shape", "all", "colour", "position"))
    z = enc.encode(media)  # (N, C, [t,] h, w) normalised latents
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(args.seed))
    w = pipe.sample_config().guidance if args.guidance is None else args.guidance
    with torch.no_grad():
        cond = pipe.task.input_condition(pipe.velocity, prompts, pipe.device)
        fn = cfg_velocity(pipe.velocity, cond, pipe.task.null_condition(pipe.velocity), w)
        print(f"{args.model}: {len(prompts)} items matching {args.match or 'anything'}, guidance {w:g}, heun")
        print("t0     " + " ".join(f"{a:<8}" for a in attrs))
        for t0 in args.t0:
            x_t = pipe.path.sample(z, torch.full((len(z),), t0), eps).x_t
            if t0 < 1.0:
                grid = torch.linspace(t0, 1.0, max(1, round(args.steps * (1.0 - t0))) + 1)
                x_t = ode_solve(fn, x_t, grid, method="heun").x
            x = enc.decode(x_t, like_shape=media.shape).clamp(-1, 1)  # t0 = 1: the tokenizer's round trip
            r = score(x.float(), prompts)
            print(f"{t0:<6.2f} " + " ".join(f"{r[a]:<8.3f}" for a in attrs))


if __name__ == "__main__":
    main()
