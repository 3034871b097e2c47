"""A video concept set: teach a trained shapes video model (mmflow.data.shapes_video) a motion it has never seen.

The train split is `n_concept` clips of the new motion (an EXTRA_MOTIONS name: up-right, "moving up and to the
right"), the shapes taken in turn over (colour, background) combinations, plus a prior-preservation share of the
original set (DreamBooth's idea): the first `n_prior` clips of the default train split, which the shipped model
was trained on. The test split is `n_test` (colour, shape, background) combinations of the new motion the train
split does not show, spread over the rest, so it measures the motion word carried to other objects, not memory;
score it with the shapes video probe (it reads EXTRA_MOTIONS). A circle may take the new motion: it is a move.

    cfg = VideoConceptConfig(motion="up-right", n_concept=40)
    items = make_video_concept(cfg, "train")            # 40 up-right + 200 prior ClipItems
    prompts = video_concept_prompts(cfg, "test")        # 42 up-right prompts never shown

    python -m mmflow.data.shapes_video_concept --out data/shapes_video/concept_upright --split train
    python -m mmflow.data.shapes_video_concept --out data/shapes_video/concept_upright_test --split test

Deterministic in the config: concept clip i is drawn from a generator seeded by (seed, stream, split, i) only.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmflow.config import check
from mmflow.data.shapes import COLOURS, SHAPES
from mmflow.data.shapes_concept import taken_in_turn
from mmflow.data.shapes_video import (BACKGROUNDS, EXTRA_MOTIONS, FRAMES, ClipItem, ClipPrompt, ShapesVideoConfig,
                                      draw_clip, make_clips, write_clip_items)

__all__ = ["VideoConceptConfig", "make_video_concept", "video_concept_prompts", "write_video_concept_folder"]

_SPLITS = {"train": 0, "test": 1}
_STREAM = 7  # the shapes video set's streams are 0-1: never the same generator as one of its clips


@dataclass
class VideoConceptConfig:
    """The new motion, how many of its clips to teach with and test on, and how much of the old set to keep."""

    motion: str = "up-right"  # an EXTRA_MOTIONS name: a motion the default splits never draw
    n_concept: int = 40  # train clips of the new motion (of 7 colours x 6 shapes x 3 backgrounds = 126)
    n_test: int = 42  # held-out prompts of the new motion, spread over the combinations train does not show
    n_prior: int = 200  # clips of the original train split (prior preservation)
    frames: int = 9
    fps: float = 8.0
    seed: int = 0

    def validate(self) -> None:
        check(self.motion in EXTRA_MOTIONS, "motion",
              f"{self.motion!r} is not a new motion; the concept motions are {list(EXTRA_MOTIONS)}")
        total = len(COLOURS) * len(SHAPES) * len(BACKGROUNDS)
        check(0 < self.n_concept < total, "n_concept", f"must be in 1..{total - 1}: the test split is the rest")
        check(0 < self.n_test <= total - self.n_concept, "n_test",
              f"must be in 1..{total - self.n_concept}: the combinations the {self.n_concept} train clips leave")
        check(self.n_prior >= 0, "n_prior", f"must be >= 0, got {self.n_prior}")
        check(self.frames in FRAMES, "frames", f"{self.frames} frames: one of {list(FRAMES)}")
        check(self.fps > 0, "fps", f"must be > 0, got {self.fps}")


def video_concept_prompts(cfg: VideoConceptConfig, split: str = "train") -> list[ClipPrompt]:
    """The new motion's prompts: train, cfg.n_concept (colour, shape, background) combinations, the shapes
    taken in turn (each shape's combinations in a seeded order); test, cfg.n_test of the rest (in COLOURS,
    SHAPES, BACKGROUNDS order), evenly spread."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {list(_SPLITS)}, got {split!r}")
    cfg.validate()
    per_shape = [[(c, s, b) for c, b in itertools.product(COLOURS, BACKGROUNDS)] for s in SHAPES]
    taken = taken_in_turn(per_shape, np.random.default_rng([cfg.seed, _STREAM]), cfg.n_concept)
    if split == "test":
        chosen = set(taken)
        rest = [(c, s, b) for c, s, b in itertools.product(COLOURS, SHAPES, BACKGROUNDS) if (c, s, b) not in chosen]
        taken = [rest[(2 * i + 1) * len(rest) // (2 * cfg.n_test)] for i in range(cfg.n_test)]
    return [ClipPrompt(s, c, cfg.motion, b) for c, s, b in taken]


def make_video_concept(cfg: VideoConceptConfig, split: str = "train") -> list[ClipItem]:
    """The split's clips: one per prompt of video_concept_prompts, then (train only) the first cfg.n_prior
    clips of the default train split (ShapesVideoConfig(n_prior, frames, fps, seed))."""
    prompts = video_concept_prompts(cfg, split)
    items = [draw_clip(p, cfg.frames, np.random.default_rng([cfg.seed, _STREAM, _SPLITS[split], i]))
             for i, p in enumerate(prompts)]
    if split == "train" and cfg.n_prior:
        items += make_clips(ShapesVideoConfig(n=cfg.n_prior, frames=cfg.frames, fps=cfg.fps, seed=cfg.seed), "train")
    return items


def write_video_concept_folder(folder: str | Path, cfg: VideoConceptConfig, split: str = "train") -> Path:
    """Write the split into `folder` as a video folder (MP4s + metadata.jsonl, as the shapes video set)."""
    return write_clip_items(folder, make_video_concept(cfg, split), cfg.fps)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmflow.data.shapes_video_concept", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the folder to write (replaced if it exists)")
    p.add_argument("--split", choices=list(_SPLITS), default="train")
    p.add_argument("--motion", default=VideoConceptConfig.motion, help=f"the new motion: {', '.join(EXTRA_MOTIONS)}")
    p.add_argument("--n-concept", type=int, default=VideoConceptConfig.n_concept, help="train clips of the new motion")
    p.add_argument("--n-test", type=int, default=VideoConceptConfig.n_test, help="held-out prompts of the new motion")
    p.add_argument("--n-prior", type=int, default=VideoConceptConfig.n_prior, help="clips of the original train split")
    p.add_argument("--frames", type=int, default=VideoConceptConfig.frames)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cfg = VideoConceptConfig(args.motion, args.n_concept, args.n_test, args.n_prior, args.frames, seed=args.seed)
    write_video_concept_folder(args.out, cfg, args.split)
    n = sum(1 for _ in (args.out / "metadata.jsonl").open())
    print(f"wrote {n} {args.split} clips of the {cfg.motion} concept to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
