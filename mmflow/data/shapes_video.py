"""Shapes video: a generated text-to-video set, the moving counterpart of mmflow.data.shapes.

Clips of 64x64 RGB, `frames` frames (1 + 4k, 9 by default: the causal video VAE's temporal factor is
4) at 8 fps, of one flat object of the image set's colours and shapes on a plain background, moving
one way the whole clip, captioned with what a probe (mmflow.metrics.probes.shapes_video) checks:

    "a red circle moving to the left on a black background"
    motions: moving to the left / right, moving up / down, rotating clockwise / counterclockwise
    (never a circle: its turn is invisible), growing, shrinking; backgrounds: white, black, grey

EXTRA_MOTIONS (up-right: "moving up and to the right") are never drawn by the default splits: a concept set
(mmflow.data.shapes_video_concept) teaches a trained model one of them, and the probe reads them always.

Motions are large enough to be unambiguous in 9 frames: a move crosses 28-36 px, a turn is 90 degrees
or more (square, cross and diamond 90, triangle 120, star 144: two of its 72-degree symmetries, so
square, cross, diamond and star end upright again), a change of size is x1.8-2.0 in side. Every clip
starts upright, so its first frame reads as the image set's shape.

Some colour x shape x motion combinations never appear in the train split (`held_out_combos`: by
default those whose COLOURS, SHAPES and MOTIONS indices sum to a multiple of 7); every colour, shape
and motion still appears in training, and so does every held-out combination's colour-shape pair and
shape-motion pair, in other combinations. The test split is every held-out combination on every
background: it measures composition, not memory.

    cfg = ShapesVideoConfig(n=2000, frames=9, seed=0)
    clips = make_clips(cfg, "train")                   # list[ClipItem]: frames (T, 64, 64, 3) uint8
    write_clips_folder("data/shapes_video/train", cfg)  # videos/00000.mp4 ... + metadata.jsonl

    python -m mmflow.data.shapes_video --out data/shapes_video/train --split train --n 2000
    python -m mmflow.data.shapes_video --out data/shapes_video/test --split test   # 138 clips

Drawing 2000 clips takes ~3 s on one CPU core; writing them as MP4 ~55 s (H.264 encoding, 8.3 MB;
measured 2026-12-02 on a shared, loaded 2-core machine).

Clip i of a split is drawn from a generator seeded by (seed, split, i) only: the same config gives the
same frames byte for byte, and a smaller set is a prefix of a larger one. Frames are drawn by
mmflow.data.shapes.render (4x supersampled) and written as H.264 by mmflow.utils.media_io.write_mp4.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmflow.config import check
from mmflow.data.shapes import COLOURS, IMAGE_SIZE, SHAPES, CaptionError, render

__all__ = ["ALL_MOTIONS", "BACKGROUNDS", "EXTRA_MOTIONS", "FRAMES", "MOTIONS", "ClipItem", "ClipPrompt",
           "ShapesVideoConfig", "all_combos", "caption", "clip_tensor", "draw_clip", "held_out_combos", "make_clips",
           "parse_caption", "test_prompts", "write_clip_items", "write_clips_folder"]

TEMPORAL_FACTOR = 4  # the causal video VAE keeps frame 0 and packs every 4 after it: T = 1 + 4k
FRAMES = (9, 13, 17)  # the clip lengths this set makes
MOTIONS = ("left", "right", "up", "down", "clockwise", "counterclockwise", "growing", "shrinking")
# Motions no default split draws: a concept set (mmflow.data.shapes_video_concept) teaches a trained model one.
# The probe reads a move whose two axes both travel >= its MOVE_PX, within a factor 2 of each other, as up-right
# when it goes up and to the right (other diagonals keep their larger axis, as before).
EXTRA_MOTIONS = ("up-right",)
ALL_MOTIONS = MOTIONS + EXTRA_MOTIONS  # every motion a caption may name, a clip show and the probe read
_MOTION_PHRASE = {"left": "moving to the left", "right": "moving to the right", "up": "moving up",
                  "down": "moving down", "clockwise": "rotating clockwise",
                  "counterclockwise": "rotating counterclockwise", "growing": "growing", "shrinking": "shrinking",
                  "up-right": "moving up and to the right"}
ROTATIONS = ("clockwise", "counterclockwise")
# Hue-less backgrounds: an object's anti-aliased rim keeps its hue on each (the colour probe votes by
# hue), and every object colour is >= 110/255 from each in some channel (the probe's foreground test).
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (255, 255, 255), "black": (0, 0, 0), "grey": (200, 200, 200)}
# Degrees a rotating shape turns over the clip: >= 90, and a whole number of its symmetries where
# that is >= 90, so the last frame is upright too (the triangle's, 360, is too many for 9 frames).
TURN = {"square": 90.0, "cross": 90.0, "diamond": 90.0, "triangle": 120.0, "star": 144.0}
MOVE_SIDE = (14.0, 20.0)  # px side of a moving object
MOVE_DISTANCE = (28.0, 36.0)  # px its centre travels
DIAGONAL_DISTANCE = (20.0, 25.0)  # px a diagonal move's centre travels along each axis (28-35 px in all)
TURN_SIDE = (18.0, 22.0)  # px side of a turning object
SCALE_START = (10.0, 12.0)  # px side of a growing object's first frame (a shrinking one's last)
SCALE_RATIO = (1.8, 2.0)  # its last side over its first
CENTRE_JITTER = 6.0  # px a turning or scaling object's centre is off the image centre
HELD_OUT_MODULUS = 7  # the rule of held_out_combos


@dataclass(frozen=True)
class ClipPrompt:
    """What a caption states: one object's colour and shape, how it moves, and the background."""

    shape: str
    colour: str
    motion: str  # an ALL_MOTIONS name
    background: str  # a BACKGROUNDS name

    @property
    def text(self) -> str:
        return caption(self)

    @property
    def combo(self) -> tuple[str, str, str]:
        return self.colour, self.shape, self.motion


@dataclass
class ClipItem:
    """A generated clip (T, 64, 64, 3) uint8, what its caption states, and the object's track."""

    frames: np.ndarray
    prompt: ClipPrompt
    track: list[tuple[float, float, float, float]]  # per frame (centre x, centre y, side, degrees clockwise)

    @property
    def caption(self) -> str:
        return self.prompt.text


@dataclass
class ShapesVideoConfig:
    """How many train clips, how long, and which colour x shape x motion combinations training never shows."""

    n: int = 2000  # train clips (the test split is every held-out combination on every background)
    frames: int = 9  # frames per clip: 1 + 4k, one of FRAMES
    fps: float = 8.0
    seed: int = 0
    held_out: list[list[str]] | None = None  # [colour, shape, motion] never in train; None: the modulus rule

    def validate(self) -> None:
        check(self.n >= 0, "n", f"the clip count must be >= 0, got {self.n}")
        check(self.frames in FRAMES, "frames",
              f"{self.frames} frames: the clip length must be 1 + {TEMPORAL_FACTOR}k in {FRAMES[0]}..{FRAMES[-1]} "
              f"(the video VAE's temporal factor is {TEMPORAL_FACTOR}): one of {list(FRAMES)}")
        check(self.fps > 0, "fps", f"must be > 0, got {self.fps}")
        held = held_out_combos(self)
        every = all_combos()
        bad = [c for c in held if c not in every]
        check(not bad, "held_out", f"{bad} are not colour x shape x motion combinations of this set "
                                   f"(colours {list(COLOURS)}, shapes {list(SHAPES)}, motions {list(MOTIONS)}; "
                                   f"a circle never rotates)")
        train = [c for c in every if c not in held]
        for k, what in enumerate(("colour", "shape", "motion")):
            missing = sorted({c[k] for c in every} - {c[k] for c in train})
            check(not missing, "held_out", f"holds out every combination of {what} {missing}")
        pairs = {(c[0], c[1]) for c in train}, {(c[1], c[2]) for c in train}
        unseen = [c for c in held if (c[0], c[1]) not in pairs[0] or (c[1], c[2]) not in pairs[1]]
        check(not unseen, "held_out", f"{unseen}: a held-out combination's colour-shape or shape-motion pair "
                                      "must appear in training in another combination")


def all_combos() -> list[tuple[str, str, str]]:
    """Every (colour, shape, motion) the set can draw (no rotating circle)."""
    return [(c, s, m) for c, s, m in itertools.product(COLOURS, SHAPES, MOTIONS)
            if not (s == "circle" and m in ROTATIONS)]


def held_out_combos(cfg: ShapesVideoConfig) -> list[tuple[str, str, str]]:
    """The (colour, shape, motion) combinations of the test split, sorted.

    Default (cfg.held_out None): those whose indices in COLOURS, SHAPES and MOTIONS sum to a multiple of
    7 (46 of the 322). For a colour-shape pair that holds out at most 2 of its motions; for a shape-motion
    pair exactly 1 of the 7 colours; for a colour-motion pair at most 1 of the 6 shapes.
    """
    if cfg.held_out is not None:
        return sorted((str(c), str(s), str(m)) for c, s, m in cfg.held_out)
    colours, index = list(COLOURS), {**{s: i for i, s in enumerate(SHAPES)}, **{m: i for i, m in enumerate(MOTIONS)}}
    return sorted(c for c in all_combos()
                  if (colours.index(c[0]) + index[c[1]] + index[c[2]]) % HELD_OUT_MODULUS == 0)


# ---------------------------------------------------------------- captions

def caption(prompt: ClipPrompt) -> str:
    """'a red circle moving to the left on a black background'."""
    article = "an" if prompt.colour[0] in "aeiou" else "a"
    motion = _MOTION_PHRASE[prompt.motion]
    return f"{article} {prompt.colour} {prompt.shape} {motion} on a {prompt.background} background"


_CAPTION_RE = re.compile(f"^an? ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}) ({'|'.join(_MOTION_PHRASE.values())}) "
                         f"on an? ({'|'.join(BACKGROUNDS)}) background$")


def parse_caption(text: str) -> ClipPrompt:
    """The inverse of `caption` (CaptionError, a UserError, for any text this set does not write)."""
    m = _CAPTION_RE.match(" ".join(text.strip().lower().split()))
    if m is None:
        raise CaptionError(f"{text!r} is not a shapes video caption (like 'a red circle moving to the left on a "
                           f"black background'; motions: {', '.join(_MOTION_PHRASE.values())}; backgrounds: "
                           f"{', '.join(BACKGROUNDS)})")
    colour, shape, phrase, background = m.groups()
    motion = next(k for k, v in _MOTION_PHRASE.items() if v == phrase)
    if shape == "circle" and motion in ROTATIONS:
        raise CaptionError(f"{text!r}: a circle's turn is invisible; this set never rotates circles")
    return ClipPrompt(shape, colour, motion, background)


# ---------------------------------------------------------------- drawing

_SPLITS = {"train": 0, "test": 1}


def _rng(cfg: ShapesVideoConfig, split: str, i: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, _SPLITS[split], i])


def _track(prompt: ClipPrompt, frames: int, rng: np.random.Generator) -> list[tuple[float, float, float, float]]:
    """(cx, cy, side, degrees clockwise) of each frame; the object stays wholly inside the image."""
    u = np.linspace(0.0, 1.0, frames)
    c = IMAGE_SIZE / 2
    m = prompt.motion
    if m in ("left", "right", "up", "down"):
        s = rng.uniform(*MOVE_SIDE)
        lo, hi = s / 2 + 1, IMAGE_SIZE - 1 - s / 2
        d = rng.uniform(*MOVE_DISTANCE)
        start = rng.uniform(lo, hi - d)
        along = start + d * u if m in ("right", "down") else hi - (start - lo) - d * u
        across = np.full(frames, rng.uniform(lo, hi))
        xs, ys = (along, across) if m in ("left", "right") else (across, along)
        return [(float(x), float(y), s, 0.0) for x, y in zip(xs, ys)]
    if m == "up-right":
        s = rng.uniform(*MOVE_SIDE)
        lo, hi = s / 2 + 1, IMAGE_SIZE - 1 - s / 2
        d = rng.uniform(*DIAGONAL_DISTANCE)
        x0, y0 = rng.uniform(lo, hi - d), rng.uniform(lo + d, hi)  # y grows downwards: up is y - d
        return [(float(x0 + d * v), float(y0 - d * v), s, 0.0) for v in u]
    cx, cy = c + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER, 2)
    if m in ROTATIONS:
        s = rng.uniform(*TURN_SIDE)
        turn = TURN[prompt.shape] * (1.0 if m == "clockwise" else -1.0)
        return [(float(cx), float(cy), s, float(turn * v)) for v in u]
    s0, ratio = rng.uniform(*SCALE_START), rng.uniform(*SCALE_RATIO)
    sides = s0 * ratio ** (u if m == "growing" else 1.0 - u)  # a constant factor per frame
    return [(float(cx), float(cy), float(s), 0.0) for s in sides]


def draw_clip(prompt: ClipPrompt, frames: int, rng: np.random.Generator) -> ClipItem:
    """The clip of `prompt`, placed by `rng`: frames (T, 64, 64, 3) uint8."""
    track = _track(prompt, frames, rng)
    bg = BACKGROUNDS[prompt.background]
    video = np.stack([render([(prompt.shape, prompt.colour, x, y, s)], bg, [a]) for x, y, s, a in track])
    return ClipItem(video, prompt, track)


def test_prompts(cfg: ShapesVideoConfig) -> list[ClipPrompt]:
    """Every held-out combination on every background."""
    cfg.validate()
    return [ClipPrompt(s, c, m, b) for c, s, m in held_out_combos(cfg) for b in BACKGROUNDS]


test_prompts.__test__ = False  # type: ignore[attr-defined]  (not a pytest test, whatever its name)


def make_clips(cfg: ShapesVideoConfig, split: str = "train") -> list[ClipItem]:
    """The split's clips: train, cfg.n clips of a uniformly drawn train combination and background;
    test, one clip of each test prompt. Deterministic in cfg (see the module docstring)."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {list(_SPLITS)}, got {split!r}")
    cfg.validate()
    if split == "test":
        return [draw_clip(p, cfg.frames, _rng(cfg, "test", i)) for i, p in enumerate(test_prompts(cfg))]
    held = set(held_out_combos(cfg))
    train = [c for c in all_combos() if c not in held]
    items = []
    for i in range(cfg.n):
        rng = _rng(cfg, "train", i)
        colour, shape, motion = train[int(rng.integers(len(train)))]
        background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
        items.append(draw_clip(ClipPrompt(shape, colour, motion, background), cfg.frames, rng))
    return items


def clip_tensor(frames: np.ndarray) -> torch.Tensor:
    """Frames (T, H, W, 3) uint8 -> (3, T, H, W) float in [-1, 1], mmflow's video layout."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float() / 127.5 - 1.0


def write_clips_folder(folder: str | Path, cfg: ShapesVideoConfig, split: str = "train") -> Path:
    """Write the split into `folder` as a video folder: videos/00000.mp4 ... (H.264 at cfg.fps) and
    metadata.jsonl lines {"file_name", "text", "shape", "colour", "motion", "background", "num_frames",
    "fps"}; returns the folder. Files of an earlier write are replaced, never merged."""
    return write_clip_items(folder, make_clips(cfg, split), cfg.fps)


def write_clip_items(folder: str | Path, items: list[ClipItem], fps: float) -> Path:
    """Write clips as a video folder (videos/00000.mp4 ..., H.264 at `fps`, and metadata.jsonl as
    write_clips_folder's); returns the folder. Files of an earlier write are replaced, never merged."""
    from mmflow.utils.fs import atomic_folder
    from mmflow.utils.media_io import write_mp4

    with atomic_folder(folder) as tmp:
        lines = []
        for i, item in enumerate(items):
            name = f"videos/{i:05d}.mp4"
            write_mp4(clip_tensor(item.frames), tmp / name, fps=fps)
            p = item.prompt
            lines.append(json.dumps({"file_name": name, "text": item.caption, "shape": p.shape, "colour": p.colour,
                                     "motion": p.motion, "background": p.background,
                                     "num_frames": int(item.frames.shape[0]), "fps": fps}))
        (tmp / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return Path(folder)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmflow.data.shapes_video", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the folder to write (replaced if it exists)")
    p.add_argument("--split", choices=list(_SPLITS), default="train")
    p.add_argument("--n", type=int, default=ShapesVideoConfig.n, help="train clips (test: every held-out prompt)")
    p.add_argument("--frames", type=int, default=ShapesVideoConfig.frames, help=f"frames per clip, one of {FRAMES}")
    p.add_argument("--fps", type=float, default=ShapesVideoConfig.fps)
    p.add_argument("--seed", type=int, default=0)
    args = vars(p.parse_args(argv))
    out, split = args.pop("out"), args.pop("split")
    cfg = ShapesVideoConfig(**args)
    rows = (write_clips_folder(out, cfg, split) / "metadata.jsonl").read_text().splitlines()
    print(f"wrote {len(rows)} {split} clips of {cfg.frames} frames to {out}; "
          f"{len(held_out_combos(cfg))} colour x shape x motion combinations held out of training")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
