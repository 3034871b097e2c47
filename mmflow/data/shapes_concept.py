"""A concept set: teach a trained shapes model (mmflow.data.shapes) a colour name it has never seen.

The train split is `n_concept` one-object images of the new colour (an EXTRA_COLOURS name, e.g. cyan),
spread evenly over the shapes, plus a prior-preservation share of the original set (DreamBooth's idea):
the first `n_prior_one` one-object and `n_prior_two` two-object images of the default train split, which
the shipped model was trained on, so fine-tuning keeps seeing the old colours. The test split is every
(shape, position, size) of the new colour the train split does not show, so it measures the colour name
carried to combinations, not memory; score it with the shapes probe (its palette includes EXTRA_COLOURS).

    cfg = ConceptConfig(colour="cyan", n_concept=40)
    items = make_concept(cfg, "train")                   # 40 cyan + 200 prior ShapeItems
    test_prompts = concept_prompts(cfg, "test")          # the 68 cyan (shape, position, size) never shown

    python -m mmflow.data.shapes_concept --out data/shapes/concept_cyan --split train
    python -m mmflow.data.shapes_concept --out data/shapes/concept_cyan_test --split test

Deterministic in the config: item i is drawn from a generator seeded by (seed, split, i) only.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmflow.config import check
from mmflow.data.shapes import (EXTRA_COLOURS, POSITIONS, SHAPES, SIZES, ShapeItem, ShapePrompt, ShapesConfig,
                                ShapeSpec, draw, make_shapes, write_items)

__all__ = ["ConceptConfig", "concept_prompts", "make_concept", "taken_in_turn", "write_concept_folder"]

_SPLITS = {"train": 0, "test": 1}
_STREAM = 7  # the shapes set's streams are 0-2: never the same generator as one of its images


@dataclass
class ConceptConfig:
    """The new colour, how many of its images to teach with, and how much of the old set to keep showing."""

    colour: str = "cyan"  # an EXTRA_COLOURS name: a colour the default splits never draw
    n_concept: int = 40  # one-object train images of the new colour (of 6 shapes x 9 positions x 2 sizes = 108)
    # the prior share keeps the base's own half-and-half mix: with 150 / 50 a LoRA on the shipped model lost
    # up to 9 points of two-object prompts (BENCHMARKS.md, "The concept on the new base")
    n_prior_one: int = 100  # one-object images of the original train split (prior preservation)
    n_prior_two: int = 100  # two-object images of it
    seed: int = 0

    def validate(self) -> None:
        check(self.colour in EXTRA_COLOURS, "colour",
              f"{self.colour!r} is not a new colour; the concept colours are {list(EXTRA_COLOURS)}")
        total = len(SHAPES) * len(POSITIONS) * len(SIZES)
        check(0 < self.n_concept < total, "n_concept", f"must be in 1..{total - 1}: the test split is the rest")
        check(self.n_prior_one >= 0 and self.n_prior_two >= 0, "n_prior_one", "counts must be >= 0")


def taken_in_turn(groups: list[list[Any]], rng: np.random.Generator, n: int) -> list[Any]:
    """The first n of `groups` taken one from each group in turn, each group's items in an order `rng`
    shuffles (the groups are shuffled in place, in order): a concept set's items spread over its shapes,
    and a larger n extends a smaller one's list."""
    for items in groups:
        rng.shuffle(items)
    return [c for round_ in zip(*groups) for c in round_][:n]


def concept_prompts(cfg: ConceptConfig, split: str = "train") -> list[ShapePrompt]:
    """The one-object prompts of the new colour: train, cfg.n_concept of the (shape, position, size)
    combinations, the shapes taken in turn (each shape's combinations in a seeded order); test, the rest,
    in SHAPES, POSITIONS, SIZES order."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {list(_SPLITS)}, got {split!r}")
    cfg.validate()
    per_shape = [[(s, p, z) for p, z in itertools.product(POSITIONS, SIZES)] for s in SHAPES]
    taken = taken_in_turn(per_shape, np.random.default_rng([cfg.seed, _STREAM]), cfg.n_concept)
    if split == "test":
        chosen = set(taken)
        taken = [(s, p, z) for s, p, z in itertools.product(SHAPES, POSITIONS, SIZES) if (s, p, z) not in chosen]
    return [ShapePrompt((ShapeSpec(s, cfg.colour, p, z),)) for s, p, z in taken]


def make_concept(cfg: ConceptConfig, split: str = "train") -> list[tuple[str, ShapeItem]]:
    """(file name, item) of the split: concept_00000.png ... one image per prompt of concept_prompts,
    then (train only) the prior images one_00000.png ..., two_00000.png ... of the default train split."""
    prompts = concept_prompts(cfg, split)
    named = [(f"concept_{i:05d}.png", draw(p, np.random.default_rng([cfg.seed, _STREAM, _SPLITS[split], i])))
             for i, p in enumerate(prompts)]
    if split == "train":
        prior = make_shapes(ShapesConfig(n_one=cfg.n_prior_one, n_two=cfg.n_prior_two, seed=cfg.seed), "train")
        named += [(f"one_{i:05d}.png", it) for i, it in enumerate(prior[:cfg.n_prior_one])]
        named += [(f"two_{i:05d}.png", it) for i, it in enumerate(prior[cfg.n_prior_one:])]
    return named


def write_concept_folder(folder: str | Path, cfg: ConceptConfig, split: str = "train") -> Path:
    """Write the split into `folder` as an image folder (PNGs + metadata.jsonl, as the shapes set)."""
    return write_items(folder, make_concept(cfg, split))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmflow.data.shapes_concept", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the folder to write (replaced if it exists)")
    p.add_argument("--split", choices=list(_SPLITS), default="train")
    p.add_argument("--colour", default=ConceptConfig.colour, help=f"the new colour: {', '.join(EXTRA_COLOURS)}")
    p.add_argument("--n-concept", type=int, default=ConceptConfig.n_concept, help="train images of the new colour")
    p.add_argument("--n-prior-one", type=int, default=ConceptConfig.n_prior_one,
                   help="one-object images of the original train split")
    p.add_argument("--n-prior-two", type=int, default=ConceptConfig.n_prior_two,
                   help="two-object images of the original train split")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cfg = ConceptConfig(args.colour, args.n_concept, args.n_prior_one, args.n_prior_two, args.seed)
    write_concept_folder(args.out, cfg, args.split)
    n = sum(1 for _ in (args.out / "metadata.jsonl").open())
    print(f"wrote {n} {args.split} images of the {cfg.colour} concept to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
