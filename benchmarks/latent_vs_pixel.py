"""Training step time and sampling throughput at the recipe defaults, latent space vs pixel space.

Two recipes over the same generated shapes set, side by side in one process:

    latent  recipes/shapes_t2i.yaml        64x64 images through checkpoints/tokenizers/image_f4 (16x16x16
                                           latents, patch 2 -> 64 media tokens) + MiniLM (16 text tokens)
    pixel   recipes/shapes_t2i_pixel.yaml  the same images in pixel space (3x64x64, patch 4 -> 256 media
                                           tokens) + MiniLM

Each is read with `load_recipe` (plus --override, applied to both) and built with its task class, at its own
defaults: batch size, MM-DiT, optimizer, grad clip, EMA, sampler, guidance. The velocity model starts from
random weights (the time does not depend on training). Measured per recipe, each the median over --repeats:

    step, raw media  one trainer step on a collated batch of real images and captions: task.loss (for latent
                     space the tokenizer's encode and a posterior sample, for both the MiniLM encoding of the
                     captions and its CFG dropout), backward, grad-norm clip (train.grad_clip), AdamW, EMA update;
                     --steps steps per repeat, the same batch each time (loading and decoding the PNGs, the data
                     loader's work, is not timed)
    step, cached     the same step on the same items read from the cache `mmflow prepare` writes: the benchmark
                     runs prepare_cache (mmflow/tasks/media_cache.py) into a temp folder and reads the batch back
                     through the task's build_dataset (data.use_cache: require), so latent space pays for a
                     posterior sample of the cached mean/std and pixel space for nothing but the velocity model
    sampling         task.sample_media, the code of the trainer's validation and FlowPipeline, on --prompts prompts
                     of the test captions (eval.real, data/shapes/test) with the EMA weights: text encoding, noise,
                     the recipe's solver and steps, CFG at its guidance (2 rows per prompt per evaluation), decoding
                     through the tokenizer for latent space, clamp; samples/s

So that the cache is built in seconds, both recipes run on a copy of the first batch-size items of data.path
(the same files and captions, in a temp folder); prepare's cost is reported once per item as "prepare". The
measurements alternate within each repeat (latent, pixel, latent, ...) so that load from other jobs falls on
both alike.

    python -m mmflow.data.shapes --out data/shapes/train --split train    # once, if missing (and --split test)
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/latent_vs_pixel.py --threads 2
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/latent_vs_pixel.py --steps 1 --repeats 1 --override train.batch_size=4
    .venv/bin/python benchmarks/latent_vs_pixel.py --device cuda --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager

import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device
from torch import nn

from mmflow.data.cache import CachedDataset
from mmflow.data.captions import load_captions
from mmflow.errors import UserError
from mmflow.recipe import Recipe
from mmflow.tasks import get_task_class, load_recipe
from mmflow.tasks.flow_task import VELOCITY
from mmflow.tasks.media_cache import prepare_cache
from mmflow.train.ema import EMA
from mmflow.train.random import BatchRandom
from pipeline_sampling import processor, seconds  # benchmarks/ is on sys.path when this runs as a script

ROOT = Path(__file__).resolve().parent.parent
RECIPES = {"latent": ROOT / "recipes" / "shapes_t2i.yaml", "pixel": ROOT / "recipes" / "shapes_t2i_pixel.yaml"}
KINDS = ("raw", "cached", "sample")  # what one repeat measures per recipe, in this order
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


class MissingShapes(UserError, FileNotFoundError):
    """The shapes set the recipes read is not there."""


@dataclass
class Bench:
    """One recipe, built and ready: its task, trained model, optimizer, EMA and the batches and prompts."""

    name: str
    recipe: Recipe
    task: Any
    velocity: nn.Module
    optimizer: torch.optim.Optimizer
    ema: EMA | None
    batches: dict[str, dict[str, Any]]  # "raw" / "cached" -> a collated batch on the device
    prompts: list[str]
    device: torch.device
    prepare_s: float  # prepare_cache's wall time for the batch's items
    steps_done: int = 0
    times: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})

    def autocast(self) -> ContextManager[Any]:
        mp = self.recipe.train.mixed_precision
        return nullcontext() if mp == "no" else torch.autocast(self.device.type, dtype=AUTOCAST[mp])

    def train_step(self, kind: str) -> float:
        """One trainer step on the `kind` batch ("raw" or "cached") -> its loss."""
        cfg, b = self.recipe.train, self.recipe.train.batch_size
        self.velocity.train()
        rng = BatchRandom(self.recipe.seed, self.steps_done, 0, 0, b, 1, self.device)
        with self.autocast():
            out = self.task.loss({VELOCITY: self.velocity}, self.batches[kind], rng, "main", self.steps_done)
        out.loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.velocity.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.velocity)
        self.steps_done += 1
        return float(out.loss.detach())

    def sample(self) -> torch.Tensor:
        """The recipe's sampler on the prompts, as validation runs it -> media (P, 3, 64, 64) on CPU."""
        model = self.ema.shadow if self.ema is not None else self.velocity.eval()
        # check_finite off: a few steps from random weights may give anything; only the time counts here
        return self.task.sample_media(model, self.prompts, self.device, self.recipe.sample, check_finite=False)

    def run(self, kind: str, steps: int) -> float:
        """Seconds of `steps` training steps of `kind`, or of one sampling call ("sample")."""
        if kind == "sample":
            return seconds(self.sample, self.device)[0]
        return seconds(lambda: [self.train_step(kind) for _ in range(steps)], self.device)[0]


def copy_first_items(recipe: Recipe, n: int, dest: Path) -> None:
    """The first n items of recipe.data.path with their captions into dest (metadata.jsonl)."""
    d = recipe.data
    entries = [e for e in load_captions(d.path, d.media_extensions, d.captions, d.text_field).entries if not e.problem]
    if len(entries) < n:
        raise MissingShapes(f"data.path {d.path} holds {len(entries)} usable items, fewer than train.batch_size {n}")
    dest.mkdir(parents=True)
    rows = []
    for i, e in enumerate(entries[:n]):
        name = f"{i:05d}_{e.path.name}"
        shutil.copyfile(e.path, dest / name)
        rows.append(json.dumps({"file_name": name, "text": e.text}))
    (dest / "metadata.jsonl").write_text("\n".join(rows) + "\n")


def test_prompts(recipe: Recipe, n: int) -> list[str]:
    """The first n captions of the held-out folder (eval.real, else data.path), cycled if fewer."""
    d = recipe.data
    source = recipe.eval.real or d.path
    texts = [e.text for e in load_captions(source, d.media_extensions, d.captions, d.text_field).entries if e.text]
    if not texts:
        raise MissingShapes(f"{source} holds no captions to prompt with")
    return [texts[i % len(texts)] for i in range(n)]


def build(name: str, overrides: list[str], root: Path, device: torch.device, acc: Accelerator,
          num_prompts: int) -> Bench:
    """Recipe `name` at its defaults (+ overrides), on a copy of its first batch of items, cache prepared."""
    path = RECIPES[name]
    base = load_recipe(path, overrides)
    for folder in {base.data.path, base.eval.real or base.data.path}:
        if not Path(folder).is_dir():
            split = "test" if folder == base.eval.real else "train"
            raise MissingShapes(f"{folder} does not exist; make it with `python -m mmflow.data.shapes --out {folder} "
                                f"--split {split}`")
    b = base.train.batch_size
    data = root / name / "data"
    copy_first_items(base, b, data)
    # the copied items, their cache in the temp folder (required: a stale one is an error, not a silent raw read);
    # no eval.check, so that build_dataset does not load the probe, which training steps never use
    recipe = load_recipe(path, [*overrides, f"data.path={data}", f"data.cache={root / name / 'cache'}",
                                "data.use_cache=require", "eval.check=null", f"run_dir={root / name / 'run'}"])
    task = get_task_class(recipe.task)(recipe)
    torch.manual_seed(recipe.seed)
    velocity = task.build_models()[VELOCITY].to(device)
    task.place_frozen_models(device)
    cfg = recipe.train
    optimizer = torch.optim.AdamW([p for p in velocity.parameters() if p.requires_grad], lr=cfg.lr,
                                  betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    ema = EMA(velocity, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay else None

    batches = {}
    raw = task.raw_dataset()
    keys = next(iter(task.batch_sampler(raw, b, 0, 1, recipe.seed, 0)))
    batches["raw"] = send_to_device(task.collate([raw[k] for k in keys]), device)
    prepare_s, _ = seconds(lambda: prepare_cache(task, acc, batch_size=16), device)
    cached = task.build_dataset()
    assert isinstance(cached, CachedDataset), type(cached)
    keys = next(iter(task.batch_sampler(cached, b, 0, 1, recipe.seed, 0)))
    batches["cached"] = send_to_device(task.collate([cached[k] for k in keys]), device)
    return Bench(name, recipe, task, velocity, optimizer, ema, batches, test_prompts(base, num_prompts), device,
                 prepare_s)


def count(modules: list[nn.Module]) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def row(bench: Bench, steps: int) -> dict[str, Any]:
    """The table's numbers for one recipe (medians of the repeats)."""
    task, r = bench.task, bench.recipe
    shape, patch = task.latent_shape(), r.model.mmdit.patch_size
    media_tokens = 1
    for n, p in zip(shape[1:], patch):
        media_tokens *= n // p
    with torch.no_grad():
        text_tokens = task.encoders.encode_prompts(bench.prompts[:1]).tokens.shape[1]  # (1, S, D)
    med = {k: statistics.median(v) for k, v in bench.times.items()}
    b, s = r.train.batch_size, r.sample
    return {
        "recipe": f"{bench.name} ({RECIPES[bench.name].name})",
        "x": "x".join(map(str, shape)),
        "tokens": f"{media_tokens} + {text_tokens}",
        "params": f"{count([bench.velocity]) / 1e6:.2f}M + {count(list(task.frozen_models().values())) / 1e6:.1f}M",
        "batch": b,
        "raw": med["raw"] / steps, "cached": med["cached"] / steps,
        "raw_ips": b * steps / med["raw"], "cached_ips": b * steps / med["cached"],
        "sampler": f"{s.solver} x{s.steps}, w={s.guidance:g}",
        "sps": len(bench.prompts) / med["sample"],
        "prepare_ms": 1000 * bench.prepare_s / b,
    }


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"machine: {processor()}, {os.cpu_count()} cores, {platform.system()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), device {args.device}, {time.strftime('%Y-%m-%d')}")
    print(f"command: {' '.join(['python', *sys.argv])}  (median of {args.repeats}; {args.steps} step(s) per repeat, "
          f"{args.warmup} warm-up)")
    print(f"sampling: {args.prompts} test prompts per call; params: trained MM-DiT + frozen tokenizer/text encoder\n")
    print("| recipe | x (C x H x W) | tokens (media + text) | params | batch | s/step raw | s/step cached | "
          "images/s raw | images/s cached | sampler | samples/s | prepare ms/item |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['recipe']} | {r['x']} | {r['tokens']} | {r['params']} | {r['batch']} | {r['raw']:.3f} | "
              f"{r['cached']:.3f} | {r['raw_ips']:.1f} | {r['cached_ips']:.1f} | {r['sampler']} | {r['sps']:.2f} | "
              f"{r['prepare_ms']:.1f} |")
    if len(rows) == 2:
        lat, pix = rows
        ratio = {k: lat[k] / pix[k] for k in ("raw", "cached", "raw_ips", "cached_ips", "sps", "prepare_ms")}
        print(f"| latent / pixel | | | | | {ratio['raw']:.2f} | {ratio['cached']:.2f} | {ratio['raw_ips']:.2f} | "
              f"{ratio['cached_ips']:.2f} | | {ratio['sps']:.2f} | {ratio['prepare_ms']:.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=5, help="timed training steps per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="untimed steps (and sampling calls) before the repeats")
    p.add_argument("--prompts", type=int, default=16, help="prompts per sampling call")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted recipe override applied to both recipes (repeatable), e.g. train.batch_size=4")
    args = p.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    acc = Accelerator(cpu=device.type == "cpu")
    with tempfile.TemporaryDirectory(prefix="mmflow_bench_") as tmp:
        benches = [build(name, args.override, Path(tmp), device, acc, args.prompts) for name in RECIPES]
        print("built; warming up", file=sys.stderr, flush=True)
        for bench in benches:
            for kind in KINDS:
                if args.warmup:  # first-call allocations, lazy loading
                    bench.run(kind, args.warmup)
        for r in range(args.repeats):
            for kind in KINDS:
                for bench in benches:  # alternating, so that outside load falls on both recipes alike
                    bench.times[kind].append(bench.run(kind, args.steps))
            print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr, flush=True)
        rows = [row(bench, args.steps) for bench in benches]
    print_table(rows, args)


if __name__ == "__main__":
    main()
