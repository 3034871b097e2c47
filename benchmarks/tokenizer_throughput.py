"""Tokenizer speed on CPU: encode and decode items/s and peak memory, per tokenizer recipe.

For each recipe in tokenizers/ (image_f4, image_f8, video, audio) the VAE is built as the recipe says
(random weights: speed does not depend on them) and fed random media of the recipe's item shape
(image 64x64, video 9 frames of 64x64, audio 1 s at 16 kHz by default). Encode is the posterior
mean, decode maps those latents back; both in eval mode without gradients. Each (tokenizer, pass)
runs in a fresh process so its peak resident memory (ru_maxrss) is its own; "work MiB" is that peak
minus the resident memory once the model and the input exist, i.e. what the pass itself needs.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tokenizer_throughput.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tokenizer_throughput.py --batch 16 --repeats 5 image_f8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("image_f4", "image_f8", "video", "audio")


def _rss_mib() -> float:
    """Current resident memory of this process (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _item_shape(recipe) -> tuple[int, ...]:
    return recipe.data.spec.media_shape(recipe.data)


def worker(name: str, what: str, batch: int, repeats: int) -> dict:
    """One measurement in this process: items/s of `what` (encode | decode) and memory."""
    from mmflow.tasks import load_recipe
    from mmflow.tasks.tokenizer import TokenizerTask

    recipe = load_recipe(REPO / "tokenizers" / f"{name}.yaml")
    vae = TokenizerTask(recipe).build_models()["tokenizer"].eval()
    x = torch.rand(batch, *_item_shape(recipe), generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x[:1]).mode()
        z = z.expand(batch, *z.shape[1:]).contiguous()  # (B, C_lat, ...)
        base = _rss_mib()
        run = (lambda: vae.encode(x).mode()) if what == "encode" else (lambda: vae.decode(z, like_shape=x.shape))
        run()  # warm-up (allocator, one-time set-up)
        t0 = time.perf_counter()
        for _ in range(repeats):
            run()
        dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"items_per_s": batch * repeats / dt, "peak_mib": peak, "work_mib": peak - base,
            "params_m": sum(p.numel() for p in vae.parameters()) / 1e6, "item": list(x.shape[1:]),
            "latent": list(z.shape[1:])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("recipes", nargs="*", default=list(RECIPES), help=f"tokenizer recipes (default: {' '.join(RECIPES)})")
    p.add_argument("--batch", type=int, default=8, help="items per call")
    p.add_argument("--repeats", type=int, default=3, help="timed calls after one warm-up")
    p.add_argument("--worker", nargs=2, metavar=("RECIPE", "PASS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.batch, args.repeats)))
        return
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, batch {args.batch}, {args.repeats} timed calls")
    print(f"{'tokenizer':<10} {'params':>7} {'item':<16} {'latent':<14} {'encode/s':>9} {'work MiB':>9} "
          f"{'decode/s':>9} {'work MiB':>9} {'peak MiB':>9}")
    for name in args.recipes:
        res = {}
        for what in ("encode", "decode"):
            cmd = [sys.executable, __file__, "--worker", name, what, "--batch", str(args.batch), "--repeats", str(args.repeats)]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
            if out.returncode:
                sys.exit(f"{name} {what} failed:\n{out.stderr}")
            res[what] = json.loads(out.stdout.strip().splitlines()[-1])
        e, d = res["encode"], res["decode"]
        print(f"{name:<10} {e['params_m']:>6.2f}M {'x'.join(map(str, e['item'])):<16} {'x'.join(map(str, e['latent'])):<14} "
              f"{e['items_per_s']:>9.1f} {e['work_mib']:>9.0f} {d['items_per_s']:>9.1f} {d['work_mib']:>9.0f} "
              f"{max(e['peak_mib'], d['peak_mib']):>9.0f}")


if __name__ == "__main__":
    main()
