"""The shapes video probe: does a generated clip show what its shapes video prompt (mmflow.data.shapes_video) asked?

Exact rules on each frame's largest object (mmflow.metrics.probes.shapes.find_objects), and the image
probe's shape classifier:
- colour: the image probe's hue vote in each frame where an object is found; the clip's colour is the
  frames' majority;
- shape: the shipped shapes CNN on the object's mask in the first or the last frame, whichever shows
  it larger (a growing object is read at its end, a shrinking one at its start; ties, within 15%, take
  the first frame: every clip of the set starts upright, and a turning triangle does not end so);
- background: the median of every frame's border pixels, the nearest BACKGROUNDS colour (RGB distance);
- motion, in this order: a move when the centroid track's least-squares line travels >= MOVE_PX over the
  clip (direction: its larger axis; up-right, the concept sets' diagonal, when both axes travel >= MOVE_PX
  within DIAGONAL_RATIO of each other, up and to the right); else growing / shrinking when the fitted area
  changes by a factor >= SCALE_FACTOR; else a turn when the summed frame-to-frame rotation reaches
  TURN_DEGREES. Each step's rotation is the angle in [-30, 30] degrees (1-degree grid) that best maps the
  previous frame's soft object mask, turned about its centroid, onto the current one (least squares): exact
  for squares and crosses, whose second moments are isotropic and carry no orientation. Otherwise "still"
  (wrong).

    score = score_shapes_video(clips, captions)   # clips (B, 3, T, 64, 64) in [-1, 1], as score_shapes
    score["motion"], score["all"], score["items"][0]

Measured on real clips (seed 0, the default 9-frame test split: 138 clips, every held-out combination
on every background, written to H.264 MP4 by write_clips_folder and decoded by mmflow's video reader):
motion 1.00, colour 1.00, shape 1.00, background 1.00, all 1.00; the same clips played backwards:
motion 0.00; 500 train clips: all 1.00; the test split at 13 frames (seed 1) and 17 frames: all 1.00.
Blurred (sigma 1 px) and noised (0.06) train clips: motion, colour, background 1.00, shape 0.997 (300
clips). `python -m mmflow.metrics.probes.shapes_video [--split train --n 500 --frames 17]` re-measures.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from mmflow.data.shapes import IMAGE_SIZE
from mmflow.data.shapes_video import BACKGROUNDS, ROTATIONS, ClipPrompt, parse_caption
from mmflow.metrics.probes.base import ProbeInputError, fraction, load_probe
from mmflow.metrics.probes.shapes import FG_THRESHOLD, FoundObject, ShapesProbe, find_objects

__all__ = ["ATTRIBUTES", "ClipReading", "score_shapes_video", "turn_degrees"]

ATTRIBUTES = ("motion", "colour", "shape", "background")
MOVE_PX = 10.0  # px the fitted centroid travels: a move (the set's cross 28-36 px; turning ones wobble < 1)
DIAGONAL_RATIO = 2.0  # a move whose axes both reach MOVE_PX within this factor of each other is diagonal
SCALE_FACTOR = 1.7  # fitted area ratio last/first: growing (the set's is 1.8^2 = 3.2 or more)
TURN_DEGREES = 30.0  # summed rotation: a turn (the set's is 90 or more)
STEP_ANGLES = np.arange(-30.0, 30.5, 1.0)  # degrees a frame may turn from the previous (the set's: <= 18)
SHAPE_TIE = 1.15  # first and last frame areas within this factor: read the shape on the first
_BACKGROUND_RGB = np.array(list(BACKGROUNDS.values()), dtype=np.float64) / 255.0


def _as_prompt(p: str | ClipPrompt | dict) -> ClipPrompt:
    if isinstance(p, ClipPrompt):
        return p
    if isinstance(p, str):
        return parse_caption(p)
    return ClipPrompt(p["shape"], p["colour"], p["motion"], p["background"])


def _fit_change(values: np.ndarray, times: np.ndarray, span: float) -> float:
    """Change over `span` frames of the least-squares line through (times, values)."""
    return float(np.polyfit(times, values, 1)[0] * span)


def turn_degrees(alphas: np.ndarray) -> float:
    """Soft object masks (T, H, W) of consecutive frames -> the summed clockwise (on screen) rotation in degrees.

    Each step: the angle of STEP_ANGLES by which the previous mask, turned about its centroid and moved
    onto the current one's, best matches the current mask (least squares). Frames without mass are skipped."""
    h, w = alphas.shape[1:]
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    rad = np.deg2rad(STEP_ANGLES)[:, None, None]
    cos, sin = np.cos(rad), np.sin(rad)
    masses = alphas.reshape(len(alphas), -1).sum(1)
    kept = [a for a, m in zip(alphas, masses) if m > 0]
    total = 0.0
    for prev, cur in zip(kept[:-1], kept[1:]):
        cy_p, cx_p = ndimage.center_of_mass(prev)
        cy_c, cx_c = ndimage.center_of_mass(cur)
        dx, dy = xx - cx_c, yy - cy_c
        # inverse of a clockwise turn with y down: where in `prev` each pixel of the turned copy comes from
        src_x = cx_p + dx * cos + dy * sin  # (A, H, W)
        src_y = cy_p - dx * sin + dy * cos
        turned = ndimage.map_coordinates(prev, [src_y.ravel(), src_x.ravel()], order=1, cval=0.0)
        err = ((turned.reshape(len(STEP_ANGLES), h, w) - cur[None]) ** 2).sum((1, 2))
        total += float(STEP_ANGLES[int(err.argmin())])
    return total


class ClipReading:
    """What the rules read in one clip (3, T, H, W) in [-1, 1]: background, each frame's largest object."""

    def __init__(self, clip: Tensor | np.ndarray) -> None:
        x = clip.detach().float().cpu().numpy() if isinstance(clip, Tensor) else np.asarray(clip, dtype=np.float64)
        self.frames = x.transpose(1, 0, 2, 3)  # (T, 3, H, W) in [-1, 1]
        rgb = np.clip((x.transpose(1, 2, 3, 0) + 1.0) / 2.0, 0.0, 1.0)  # (T, H, W, 3) in [0, 1]
        border = np.concatenate([rgb[:, 0], rgb[:, -1], rgb[:, :, 0], rgb[:, :, -1]], axis=1).reshape(-1, 3)
        self.bg_rgb = np.median(border, axis=0)
        self.background = list(BACKGROUNDS)[int(np.linalg.norm(_BACKGROUND_RGB - self.bg_rgb, axis=1).argmin())]
        self.diff = np.abs(rgb - self.bg_rgb).max(-1)  # (T, H, W)
        self.objects: list[FoundObject | None] = [(found[0] if (found := find_objects(f)) else None)
                                                  for f in self.frames]

    @property
    def seen(self) -> list[int]:
        """Frames in which an object was found."""
        return [t for t, o in enumerate(self.objects) if o is not None]

    @property
    def colour(self) -> str | None:
        votes = Counter(o.colour for o in self.objects if o is not None)
        return votes.most_common(1)[0][0] if votes else None

    def shape_object(self) -> FoundObject | None:
        """The object of the first or last seen frame, whichever is larger (ties: the first)."""
        seen = self.seen
        if not seen:
            return None
        first, last = self.objects[seen[0]], self.objects[seen[-1]]
        return last if last.area > SHAPE_TIE * first.area else first

    def motion(self) -> tuple[str, dict[str, float]]:
        """(an ALL_MOTIONS name or 'still', the measurements: dx, dy px, area factor, turn degrees)."""
        seen = self.seen
        if len(seen) < 2:
            return "still", {}
        t = np.array(seen, dtype=np.float64)
        span = float(len(self.objects) - 1)
        xs, ys = (np.array([self.objects[k].centroid[i] for k in seen]) for i in (0, 1))
        dx, dy = _fit_change(xs, t, span), _fit_change(ys, t, span)
        factor = float(np.exp(_fit_change(np.log([self.objects[k].area for k in seen]), t, span)))
        measured = {"dx": round(dx, 2), "dy": round(dy, 2), "area_factor": round(factor, 3)}
        if min(abs(dx), abs(dy)) >= MOVE_PX and min(abs(dx), abs(dy)) * DIAGONAL_RATIO >= max(abs(dx), abs(dy)) \
                and dx > 0 > dy:
            return "up-right", measured  # the vocabulary's one diagonal (EXTRA_MOTIONS); y grows downwards
        if max(abs(dx), abs(dy)) >= MOVE_PX:
            return (("right" if dx > 0 else "left") if abs(dx) >= abs(dy) else ("down" if dy > 0 else "up")), measured
        if max(factor, 1.0 / factor) >= SCALE_FACTOR:
            return ("growing" if factor > 1 else "shrinking"), measured
        alphas = np.where(self.diff > FG_THRESHOLD / 2, self.diff, 0.0)  # soft masks, specks of noise off
        turn = turn_degrees(alphas)
        measured["turn"] = turn
        if abs(turn) >= TURN_DEGREES:
            return ROTATIONS[0] if turn > 0 else ROTATIONS[1], measured
        return "still", measured


def _check_clips(clips: Tensor, num_prompts: int) -> None:
    """ProbeInputError unless clips is (num_prompts, 3, T >= 2, 64, 64)."""
    want = f"(B, 3, T >= 2, {IMAGE_SIZE}, {IMAGE_SIZE})"
    if clips.ndim != 5 or clips.shape[1] != 3 or clips.shape[2] < 2 or clips.shape[3:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ProbeInputError(f"score_shapes_video takes clips {want} in [-1, 1], got {tuple(clips.shape)}")
    if num_prompts != len(clips):
        raise ProbeInputError(f"{len(clips)} clips but {num_prompts} prompts")


@torch.no_grad()
def score_shapes_video(clips: Tensor, prompts: Sequence[str | ClipPrompt | dict],
                       probe: ShapesProbe | None = None) -> dict[str, Any]:
    """How many clips (B, 3, T, 64, 64) in [-1, 1] show what their prompts ask.

    prompts: captions, ClipPrompts or metadata.jsonl dicts, one per clip. Returns accuracies motion,
    colour, shape, background, all (the four right), n, and `items`, one dict per clip with its
    reading and per-attribute correctness. `probe`: the image ShapesProbe (default: the shipped one).
    """
    _check_clips(clips, len(prompts))
    asked = [_as_prompt(p) for p in prompts]
    probe = probe if probe is not None else load_probe(name="shapes")
    readings = [ClipReading(c) for c in clips]
    shape_objects = [r.shape_object() for r in readings]
    # one classifier call over the batch's shape crops
    shapes = iter(probe.classify([o.crop for o in shape_objects if o is not None]))
    items = []
    for p, r, o in zip(asked, readings, shape_objects):
        motion, measured = r.motion()
        pred = {"motion": motion, "colour": r.colour, "shape": next(shapes) if o is not None else None,
                "background": r.background}
        ok = {a: pred[a] == getattr(p, a) for a in ATTRIBUTES}
        items.append({"prompt": p.text, "pred": pred, "measured": measured, "frames_seen": len(r.seen), **ok,
                      "all": all(ok.values())})
    out: dict[str, Any] = {a: fraction([it[a] for it in items]) for a in (*ATTRIBUTES, "all")}
    out.update(n=len(items), items=items)
    return out


def main(argv: list[str] | None = None) -> int:
    """Re-measure the probe on real clips: a split written to MP4, decoded, scored; and played backwards."""
    import tempfile
    from pathlib import Path

    from mmflow.data.shapes_video import ShapesVideoConfig, write_clips_folder
    from mmflow.modalities import get_modality

    p = argparse.ArgumentParser(prog="python -m mmflow.metrics.probes.shapes_video", description=main.__doc__)
    p.add_argument("--split", choices=["train", "test"], default="test")
    p.add_argument("--n", type=int, default=500, help="train clips (test: every held-out prompt)")
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cfg = ShapesVideoConfig(n=args.n, frames=args.frames, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_clips_folder(Path(tmp) / "clips", cfg, args.split)
        rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
        video = get_modality("video")
        clips = torch.stack([video.read_whole(folder / r["file_name"])[0] for r in rows])
    probe = load_probe(name="shapes")
    s = score_shapes_video(clips, rows, probe)
    back = score_shapes_video(clips.flip(2), rows, probe)
    scores = ", ".join(f"{a} {s[a]:.3f}" for a in (*ATTRIBUTES, "all"))
    print(f"{args.split} split, {s['n']} clips of {cfg.frames} frames (seed {cfg.seed}), through MP4: {scores}; "
          f"played backwards: motion {back['motion']:.3f}")
    for it in s["items"]:
        if not it["all"]:
            print("wrong:", it["prompt"], it["pred"], it["measured"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
