"""Sampling time per item through FlowPipeline (image, video clip, audio clip) at the recipe defaults.

For each modality a text_to_media model is built at recipes/emoji_image.yaml's sizes (MM-DiT 192 wide,
6 deep, 6 heads; MiniLM text encoder, 16 tokens; heun x16, guidance 4), with random weights (the time
does not depend on training), exported the way the trainer exports (models/ + pipeline.json) and loaded
with `FlowPipeline.from_pretrained`. Only the data section and the patch size change per modality:

    image  3x32x32 pixels, patch [2, 2]          -> 256 media tokens   (the emoji recipe itself)
    video  8 frames of 32x32 pixels, patch [2,4,4] -> 256 media tokens, 8 fps
    audio  4 s of 16 kHz mono waveform, patch [250] -> 256 media tokens

No video or audio recipe exists yet (issues 15 and 16 add them), so those two rows use the image
recipe's network and sampler. Measured per modality, each the median over --repeats, in seconds per item:

    pipeline (batch 4)  pipe(2 prompts, num_per_prompt=2, batch_size=4): text encoding, per-seed noise,
                        the solver, clamp, chunking -- one call of 4 items
    pipeline (batch 1)  pipe(1 prompt, num_per_prompt=1, batch_size=1): one item
    bare loop           mmflow.sampling.generate.generate on the same model, 4 rows, with the condition
                        and the noise computed beforehand: the reference, so that
                        overhead = pipeline (batch 4) / bare loop - 1 is what the pipeline adds
    save                pipe.save of the batch-4 output (PNG / MP4 / WAV per item, samples.png, samples.json),
                        and of that the per-item files alone (the modality's writer, as save calls it)

The measurements alternate within each repeat so that load from other jobs falls on all of them alike.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pipeline_sampling.py
    .venv/bin/python benchmarks/pipeline_sampling.py --modalities image --repeats 5 --device cuda
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from mmflow.config import to_dict
from mmflow.modalities import get_modality
from mmflow.model_io import save_model
from mmflow.pipeline import FlowPipeline
from mmflow.sampling.generate import generate
from mmflow.tasks import get_task_class, recipe_from_dict
from mmflow.utils.fs import write_json_atomic

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "emoji_image.yaml"
MEDIA: dict[str, tuple[dict[str, Any], list[int], str]] = {  # data section over the recipe's, patch, what one item is
    "image": ({"modality": "image", "size": 32}, [2, 2], "3x32x32 pixels"),
    "video": ({"modality": "video", "frames": 8, "size": 32, "fps": 8.0}, [2, 4, 4], "3x8x32x32 pixels, 8 fps"),
    "audio": ({"modality": "audio", "sample_rate": 16000, "seconds": 4.0, "channels": 1}, [250],
              "4 s 16 kHz mono waveform"),
}
PROMPTS = ["a red heart", "a cat face"]


def export_random_model(modality: str, root: Path) -> Path:
    """A randomly initialised text_to_media model at the emoji recipe's sizes, exported like the trainer's
    `_export_models` does (models/velocity, the frozen encoders, pipeline.json) -> its folder."""
    raw = yaml.safe_load(RECIPE.read_text())
    data, patch, _ = MEDIA[modality]
    media = root / "media"  # the recipe must name an existing folder; eval_prompts spares reading its captions
    media.mkdir(parents=True)
    raw["data"] = {**raw["data"], **data, "path": str(media), "use_cache": "off", "eval_prompts": PROMPTS}
    raw["model"]["mmdit"]["patch_size"] = patch
    raw["run_dir"] = str(root / "run")
    recipe = recipe_from_dict(raw, source=f"{RECIPE} ({modality})")
    task = get_task_class(recipe.task)(recipe)
    torch.manual_seed(0)
    folder = root / "model"
    for name, model in task.build_models().items():
        save_model(model, folder / "models" / name)
    components = task.export_frozen(folder / "models")
    info = {**task.pipeline_info(), "recipe": to_dict(recipe)}
    write_json_atomic(folder / "pipeline.json", {**info, "components": components} if components else info)
    return folder


def processor() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, where platform.processor() is often empty)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def seconds(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """(wall seconds of fn(), its result), synchronising a CUDA device around the call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, out


def measure(modality: str, root: Path, device: str, repeats: int) -> dict[str, Any]:
    """One modality's row: median seconds per item of each measured call (see the module docstring)."""
    pipe = FlowPipeline.from_pretrained(export_random_model(modality, root), device=device)
    cfg, layout = pipe.sample_config(), pipe.task.sample_layout()
    patch = pipe.task.mmdit_config().patch_size
    media_tokens = 1
    for n, p in zip(layout.x_shape[1:], patch):
        media_tokens *= n // p
    rows = [p for p in PROMPTS for _ in range(2)]  # what pipe(PROMPTS, num_per_prompt=2) samples
    cond = pipe.task.input_condition(pipe.velocity, rows, pipe.device)
    null = pipe.task.null_condition(pipe.velocity)
    x0 = torch.stack([torch.randn(layout.x_shape, generator=torch.Generator().manual_seed(s)) for s in range(4)])
    x0 = x0.to(pipe.device)

    def bare() -> Any:
        return generate(pipe.velocity, x0, cond, null, cfg, pipe.path, generator=torch.Generator().manual_seed(0),
                        decode=layout.decode, clamp=layout.clamp)

    dev = pipe.device
    pipe(PROMPTS[:1], num_per_prompt=1, batch_size=1)  # warm-up: first-call allocations, lazy encoder loading
    times: dict[str, list[float]] = {"batch4": [], "batch1": [], "bare": [], "save": [], "files": []}
    spec = get_modality(layout.modality)
    out = None
    for r in range(repeats):
        t, out = seconds(lambda: pipe(PROMPTS, num_per_prompt=2, batch_size=4), dev)
        times["batch4"].append(t / 4)
        t, ref = seconds(bare, dev)
        times["bare"].append(t / 4)
        t, _ = seconds(lambda: pipe(PROMPTS[:1], num_per_prompt=1, batch_size=1), dev)
        times["batch1"].append(t)
        t, _ = seconds(lambda: pipe.save(out, root / f"samples_{r}"), dev)
        times["save"].append(t / len(out.media))
        t, _ = seconds(lambda: [spec.write(x, root / f"files_{r}_{i}{spec.suffix}", fps=layout.fps,
                                           sample_rate=layout.sample_rate, metadata=out.metadata(i))
                                for i, x in enumerate(out.media)], dev)
        times["files"].append(t / len(out.media))  # the per-item files alone, without preview and index
        assert ref.x.shape == out.media.shape, (ref.x.shape, out.media.shape)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"modality": modality, "media": MEDIA[modality][2], "tokens": f"{media_tokens} + {cond['text'].shape[1]}",
            "nfe": f"{out.nfe} x 2 rows (CFG)" if cfg.guidance != 1.0 else str(out.nfe),
            "sampler": f"{cfg.solver} x{cfg.steps}, w={cfg.guidance:g}", **med,
            "overhead": 100.0 * (med["batch4"] / med["bare"] - 1.0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modalities", nargs="+", default=list(MEDIA), choices=list(MEDIA))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mmflow_bench_") as tmp:
        for modality in args.modalities:
            rows.append(measure(modality, Path(tmp) / modality, args.device, args.repeats))
            print(f"{modality}: done", file=sys.stderr, flush=True)
    print(f"machine: {processor()}, {os.cpu_count()} cores, {platform.system()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), device {args.device}")
    print(f"command: {' '.join(['python', *sys.argv])}  (median of {args.repeats})")
    print("model: recipes/emoji_image.yaml's MM-DiT and sampler for every row, random weights; no video or audio "
          "recipe exists yet (issues 15, 16)\n")
    print("| modality | media | tokens (media + text) | sampler | NFE | pipeline s/item (batch 4) | pipeline s/item "
          "(batch 1) | bare loop s/item (batch 4) | overhead | save ms/item | of which the item's file |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['modality']} | {r['media']} | {r['tokens']} | {r['sampler']} | {r['nfe']} | {r['batch4']:.3f} | "
              f"{r['batch1']:.3f} | {r['bare']:.3f} | {r['overhead']:+.1f}% | {1000 * r['save']:.1f} | "
              f"{1000 * r['files']:.1f} |")


if __name__ == "__main__":
    main()
