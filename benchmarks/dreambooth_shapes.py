"""DreamBooth on shapes_t2i, measured (recipes/dreambooth_shapes_t2i_lora.yaml): for the base model and each
tuned one, on the same seeds,

    subject   "a <size> sks star <position>" at every position and size: the shapes probe's colour (the subject's
              cyan), shape (star), position, size, all three of colour / position / shape
    class     the class prompt ("a large star in the centre"): the share drawn as a star, and the share drawn
              cyan (language drift: the class turning into the subject; prior preservation should keep it low)
    old       the held-out test prompts of data/shapes/test (one- and two-object): what tuning forgot

Every model samples at one guidance scale: --guidance, or the first model's default (7 for the shipped
shapes_t2i; a LoRA export's default is its own recipe's, 4 for the DreamBooth recipe).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dreambooth_shapes.py checkpoints/shapes_t2i runs/dreambooth_sks
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from mmflow.data.shapes import POSITIONS, SIZES, ShapePrompt, ShapeSpec, caption
from mmflow.metrics.probes.shapes import find_objects, load_probe, score_shapes
from mmflow.pipeline import FlowPipeline

SUBJECT = ShapeSpec("star", "cyan")  # what the sks images show (recipes/dreambooth_shapes_t2i_lora.yaml)


def subject_prompts(token: str) -> list[tuple[str, ShapePrompt]]:
    """(prompt with the rare token in place of the colour, what the probe should find) at every position / size."""
    out = []
    for size in SIZES:
        for position in POSITIONS:
            want = ShapePrompt((replace(SUBJECT, position=position, size=size),))
            out.append((caption(want).replace(f" {SUBJECT.colour} ", f" {token} "), want))
    return out


def sample(pipe: FlowPipeline, prompts: list[str], per_prompt: int, batch: int, guidance: float) -> torch.Tensor:
    return pipe(prompts, num_per_prompt=per_prompt, seed=0, batch_size=batch, guidance=guidance).media  # (N, 3, 64, 64)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", help="the base, then tuned runs / exports (a LoRA run loads its base)")
    p.add_argument("--token", default="sks")
    p.add_argument("--class-prompt", default="a large star in the centre")
    p.add_argument("--per-prompt", type=int, default=2, help="subject samples per prompt (18 prompts)")
    p.add_argument("--class-num", type=int, default=32)
    p.add_argument("--old", default="data/shapes/test", help="held-out shapes folder ('' to skip)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--guidance", type=float, default=None,
                   help="for every model (default: the first model's own; a LoRA export's differs from its base's)")
    args = p.parse_args()
    torch.set_grad_enabled(False)
    probe = load_probe(name="shapes")
    subject = subject_prompts(args.token)
    old = ([json.loads(line)["text"] for line in (Path(args.old) / "metadata.jsonl").read_text().splitlines()]
           if args.old else [])
    print("| model | subject colour | shape | position | size | all | class: star | class: cyan (drift) | "
          "old one-object all | old two_all |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    guidance = args.guidance
    for model in args.models:
        pipe = FlowPipeline.from_pretrained(model)
        guidance = pipe.sample_config().guidance if guidance is None else guidance  # one scale for all models
        media = sample(pipe, [s for s, _ in subject], args.per_prompt, args.batch_size, guidance)
        s = score_shapes(media, [w for _, w in subject for _ in range(args.per_prompt)], probe)
        cls = sample(pipe, [args.class_prompt], args.class_num, args.batch_size, guidance)
        found = [find_objects(img, expect=1) for img in cls]
        shapes = probe.classify([f[0].crop for f in found if f])
        star = sum(sh == SUBJECT.shape for sh in shapes) / len(cls)
        cyan = sum(bool(f) and f[0].colour == SUBJECT.colour for f in found) / len(cls)
        o = score_shapes(sample(pipe, old, 1, args.batch_size, guidance), old, probe) if old else {"all": float("nan"),
                                                                                         "two_all": float("nan")}
        print(f"| {model} | {s['colour']:.3f} | {s['shape']:.3f} | {s['position']:.3f} | {s['size']:.3f} | "
              f"{s['all']:.3f} | {star:.3f} | {cyan:.3f} | {o['all']:.3f} | {o['two_all']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
