"""Video VAE decode/encode memory and time with and without spatial tiling (mmflow.tokenizers.tiling).

The VAE is tokenizers/video.yaml's (random weights: memory and time do not depend on them), fed clips
2x longer than it trains on (17 frames instead of 9), at its training size 64x64 and at 256x256. Each
configuration runs in a fresh process, so its peak resident memory (ru_maxrss) is its own; "work MiB"
is that peak minus the peak before the pass (model and input already built), i.e. what the pass itself
needs, output included. Time: the mean of `--repeats` calls after one warm-up call.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vae_tiling.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vae_tiling.py --frames 33 --sizes 256 --passes decode
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
# (label, chunk_latents / chunk_frames (None = the config's), tile_latent_size, tile_overlap)
SETTINGS = [("whole frame", None, 0, None), ("time chunk 1", 1, 0, None), ("tiles 16/4", None, 16, 4),
            ("tiles 16/4 + time chunk 1", 1, 16, 4), ("tiles 8/2 + time chunk 1", 1, 8, 2)]


def worker(what: str, frames: int, size: int, setting: int, repeats: int) -> dict:
    """One measurement in this process: seconds per call of `what` (encode | decode) and memory."""
    from mmflow.tasks import load_recipe
    from mmflow.tasks.tokenizer import TokenizerTask

    vae = TokenizerTask(load_recipe(REPO / "tokenizers" / "video.yaml")).build_models()["tokenizer"].eval()
    _, chunk, tile, overlap = SETTINGS[setting]
    tf = vae.config.temporal_factor
    x = torch.rand(1, 3, frames, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = torch.randn(1, vae.config.latent_channels, *vae.latent_size(frames, size, size))
    with torch.no_grad():
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (KiB on Linux)
        if what == "encode":
            frames_chunk = None if chunk is None else chunk * tf  # the same latent chunk, in frames
            def run() -> torch.Tensor:
                return vae.encode(x, chunk_frames=frames_chunk, tile_latent_size=tile, tile_overlap=overlap).mean
        else:
            def run() -> torch.Tensor:
                return vae.decode(z, like_shape=x.shape, chunk_latents=chunk, tile_latent_size=tile,
                                  tile_overlap=overlap)
        run()  # warm-up, and the memory peak
        t0 = time.perf_counter()
        for _ in range(repeats):
            run()
        dt = (time.perf_counter() - t0) / repeats
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"s_per_call": dt, "peak_mib": peak, "work_mib": peak - base, "latent": list(z.shape[1:])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=17, help="clip length (the recipe trains on 9)")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="square frame sides")
    p.add_argument("--passes", nargs="+", default=["decode", "encode"], choices=["decode", "encode"])
    p.add_argument("--repeats", type=int, default=2, help="timed calls after one warm-up")
    p.add_argument("--worker", nargs=4, metavar=("PASS", "FRAMES", "SIZE", "SETTING"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        what, frames, size, setting = args.worker
        print(json.dumps(worker(what, int(frames), int(size), int(setting), args.repeats)))
        return
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, tokenizers/video.yaml VAE, "
          f"{args.frames} frames")
    print("| pass | clip | latent | setting | s/call | work MiB | peak MiB |\n|---|---|---|---|---|---|---|")
    for what in args.passes:
        for size in args.sizes:
            for i, (label, *_rest) in enumerate(SETTINGS):
                cmd = [sys.executable, __file__, "--worker", what, str(args.frames), str(size), str(i),
                       "--repeats", str(args.repeats)]
                out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
                if out.returncode:
                    sys.exit(f"{what} {size} {label} failed:\n{out.stderr}")
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"| {what} | {args.frames}x{size}x{size} | {'x'.join(map(str, r['latent']))} | {label} | "
                      f"{r['s_per_call']:.2f} | {r['work_mib']:.0f} | {r['peak_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
