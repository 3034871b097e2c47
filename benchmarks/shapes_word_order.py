"""Does a shapes_t2i model read word order? The flow-matching loss of two-object images under their own
captions against the same images under edited captions, with the same noise and time for all:

    own        "a red star to the left of a green circle" (what the image shows)
    swapped    "a green circle to the left of a red star": the two objects exchanged, i.e. the opposite
               relation; only word order tells the two captions apart
    axis       "a red star above a green circle": the relation moved to the other axis

A model that uses the words has a lower loss under its own captions; equal losses (and own < swapped on
half the images) mean it does not tell the two apart. The MM-DiT sees its text tokens as a set unless
model.mmdit.text_positions is set, so then only the text encoder's states carry the order.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/shapes_word_order.py checkpoints/shapes_t2i runs/X --items 192
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from mmflow.data.image_reader import read_image
from mmflow.data.shapes import ShapePrompt, caption
from mmflow.pipeline import FlowPipeline

OTHER_AXIS = {"left of": "above", "right of": "below", "above": "left of", "below": "right of"}


def edited_captions(prompt: ShapePrompt) -> dict[str, str]:
    """The item's own caption, its objects exchanged, and its relation on the other axis."""
    a, b = prompt.objects
    return {"own": caption(prompt), "swapped": caption(replace(prompt, objects=(b, a))),
            "axis": caption(replace(prompt, relation=OTHER_AXIS[prompt.relation]))}


def losses(pipe: FlowPipeline, z: torch.Tensor, eps: torch.Tensor, captions: list[str], t: float,
           batch: int) -> torch.Tensor:
    """Per-image CFM loss (N,) of latents z (N, C, h, w) at time t under `captions`, noise eps (N, C, h, w)."""
    out = []
    tt = torch.full((len(z),), t)
    ps = pipe.path.sample(z, tt, eps)
    for lo in range(0, len(z), batch):
        cond = pipe.task.encoders.encode_prompts(captions[lo: lo + batch]).as_condition()
        pred = pipe.velocity(ps.x_t[lo: lo + batch], tt[lo: lo + batch], cond)
        out.append((pred.float() - ps.target[lo: lo + batch].float()).pow(2).flatten(1).mean(1))
    return torch.cat(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", help="shapes_t2i runs, checkpoints or exported folders")
    p.add_argument("--data", default="data/shapes/train", help="a shapes folder (metadata.jsonl + images)")
    p.add_argument("--items", type=int, default=192, help="the folder's first N two-object images")
    p.add_argument("--times", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9],
                   help="flow times (0 = noise, as the recipes' paths)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_grad_enabled(False)
    folder = Path(args.data)
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("relation")][: args.items]
    if not rows:
        raise SystemExit(f"{folder}: no two-object items (make it with python -m mmflow.data.shapes)")
    captions = [edited_captions(ShapePrompt.from_dict(r)) for r in rows]
    assert all(c["own"] == r["text"] for c, r in zip(captions, rows)), "captions do not round-trip"
    images = torch.stack([read_image(folder / r["file_name"], 64) for r in rows])  # (N, 3, 64, 64)
    print(f"{len(rows)} two-object images of {folder}; mean CFM loss per caption, and how often own < swapped")
    print("| model | t | own | swapped | axis | own < swapped | own < axis |")
    print("|---|---|---|---|---|---|---|")
    for model in args.models:
        pipe = FlowPipeline.from_pretrained(model)
        z = torch.cat([pipe.task.encoders.encode(images[lo: lo + args.batch_size])
                       for lo in range(0, len(images), args.batch_size)])  # (N, C, h, w)
        eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(args.seed))
        for t in args.times:
            loss = {k: losses(pipe, z, eps, [c[k] for c in captions], t, args.batch_size) for k in captions[0]}
            print(f"| {model} | {t} | {loss['own'].mean():.4f} | {loss['swapped'].mean():.4f} | "
                  f"{loss['axis'].mean():.4f} | {(loss['own'] < loss['swapped']).float().mean():.2f} | "
                  f"{(loss['own'] < loss['axis']).float().mean():.2f} |", flush=True)


if __name__ == "__main__":
    main()
