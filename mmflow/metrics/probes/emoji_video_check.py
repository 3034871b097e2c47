"""The emoji-clip prompt check: does a generated clip move and sit on the background its caption asks?

Captions are those of ../shared/data/emoji_video64 ("a red apple moving to the right on a light blue
background"): the motion is the last MOTION_PHRASES phrase in the caption (an emoji's own name may hold
one, e.g. "clockwise ... arrows", and comes first), the background the last "on a <BACKGROUNDS name>
background". Clips of any length and size are resampled to the shipped probe's (16, 64, 64): time
linearly with the end frames kept (a generated clip of 9, 13 or 17 frames spans the whole motion, as a
training clip resampled to that length does), space by area (antialiased bilinear).

    score = score_emoji_video(clips, captions)   # clips (N, 3, T, H, W) in [-1, 1]
    score["motion"], score["background"], score["all"], score["items"][0]

Measured on the real clips the probe never trained on (its held-out fifth, 125 clips; CPU, 2026-12-02):
motion 0.968, background 1.000 as they are; resampled to 9 / 13 / 17 frames (and back to 16 by the
check): motion 0.960 / 0.968 / 0.968, background 0.992; played backwards: motion 0.136 (bounces stay
bounces); nearest-frame resampling reads 9 frames worse (motion 0.936). On all 600 clips: motion 0.993,
0.975 at 9 frames, 0.110 backwards. `python -m mmflow.metrics.probes.emoji_video_check --data
../shared/data/emoji_video64 [--all]` re-measures.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmflow.errors import UserError
from mmflow.metrics.probes.base import AttributeClassifier, ProbeInputError, fraction, load_probe
from mmflow.metrics.probes.emoji_video import BACKGROUNDS, CLIP_SHAPE, MOTIONS

__all__ = ["ATTRIBUTES", "BadEmojiCaption", "EmojiClipPrompt", "MOTION_PHRASES", "parse_emoji_caption",
           "resample_clips", "score_emoji_video"]

ATTRIBUTES = ("motion", "background")
# the dataset README's `motion` label -> caption phrase
MOTION_PHRASES = {"move_left": "moving to the left", "move_right": "moving to the right", "move_up": "moving up",
                  "move_down": "moving down", "rotate_cw": "rotating clockwise",
                  "rotate_ccw": "rotating counterclockwise", "zoom_in": "zooming in", "zoom_out": "zooming out",
                  "bounce": "bouncing"}
assert list(MOTION_PHRASES) == MOTIONS, "MOTION_PHRASES must name the probe's motions in order"
_MOTION_RE = re.compile(r"\b(" + "|".join(map(re.escape, MOTION_PHRASES.values())) + r")\b", re.IGNORECASE)
_BACKGROUND_RE = re.compile(r"\bon an? ([a-z ]+?) background\b", re.IGNORECASE)
_PHRASE_MOTION = {v: k for k, v in MOTION_PHRASES.items()}


class BadEmojiCaption(UserError, ValueError):
    """A caption that names no motion and no background of the emoji-clip set."""


@dataclass(frozen=True)
class EmojiClipPrompt:
    """What a caption asks: a MOTIONS and a BACKGROUNDS name (None where it names none)."""

    text: str
    motion: str | None
    background: str | None


def parse_emoji_caption(text: str) -> EmojiClipPrompt:
    """A caption -> its motion and background labels; BadEmojiCaption (naming it) when it names neither,
    or names a background the probe does not know."""
    motions = list(_MOTION_RE.finditer(text))
    motion = _PHRASE_MOTION[motions[-1].group(1).lower()] if motions else None
    backgrounds = list(_BACKGROUND_RE.finditer(text))
    background = None
    if backgrounds:
        background = " ".join(backgrounds[-1].group(1).lower().split())
        if background not in BACKGROUNDS:
            raise BadEmojiCaption(f"caption {text!r}: background {background!r} is not one of the emoji-clip "
                                  f"probe's: {', '.join(BACKGROUNDS)}")
    if motion is None and background is None:
        raise BadEmojiCaption(f"caption {text!r} names no motion ({', '.join(map(repr, MOTION_PHRASES.values()))}) "
                              f"and no background ('on a <colour> background', colour one of {', '.join(BACKGROUNDS)})")
    return EmojiClipPrompt(text, motion, background)


def resample_clips(clips: Tensor, frames: int = CLIP_SHAPE[1], size: int = CLIP_SHAPE[2]) -> Tensor:
    """(N, 3, T, H, W) -> (N, 3, frames, size, size) float: time linear with first and last frames kept,
    space by area (antialiased bilinear); unchanged axes are left alone."""
    x = clips.float()
    n, c, t, h, w = x.shape
    if (h, w) != (size, size):
        x = F.interpolate(x.transpose(1, 2).reshape(n * t, c, h, w), size=(size, size), mode="bilinear",
                          antialias=True, align_corners=False).reshape(n, t, c, size, size).transpose(1, 2)
    if t != frames:
        x = F.interpolate(x, size=(frames, size, size), mode="trilinear", align_corners=True)
    return x


def _check_clips(clips: Tensor, num_prompts: int) -> None:
    if clips.ndim != 5 or clips.shape[1] != 3 or clips.shape[2] < 2:
        raise ProbeInputError(f"score_emoji_video takes clips (N, 3, T >= 2, H, W) in [-1, 1], "
                              f"got {tuple(clips.shape)}")
    if num_prompts != len(clips):
        raise ProbeInputError(f"{len(clips)} clips but {num_prompts} prompts")


@torch.no_grad()
def score_emoji_video(clips: Tensor, prompts: Sequence[str | EmojiClipPrompt], probe: AttributeClassifier | None = None,
                      batch_size: int = 64) -> dict[str, Any]:
    """How many clips (N, 3, T, H, W) in [-1, 1] show the motion and background their captions ask.

    Returns accuracies motion, background (over the captions that name one; NaN if none does), all
    (every named attribute right), n, and `items`, one dict per clip. `probe`: anything with
    `attributes` and `predict` over (B, 3, 16, 64, 64) (default: the shipped emoji_video probe).
    """
    _check_clips(clips, len(prompts))
    asked = [p if isinstance(p, EmojiClipPrompt) else parse_emoji_caption(p) for p in prompts]
    probe = probe if probe is not None else load_probe(name="emoji_video")
    names = probe.attributes
    preds: dict[str, list[int]] = {a: [] for a in ATTRIBUTES}
    for i in range(0, len(clips), batch_size):  # resampled a batch at a time: 16-frame float copies add up
        part = resample_clips(clips[i: i + batch_size]).clamp(-1.0, 1.0)
        for a, idx in probe.predict(part).items():
            if a in preds:
                preds[a] += idx.tolist()
    items = []
    for k, p in enumerate(asked):
        pred = {a: names[a][preds[a][k]] for a in ATTRIBUTES}
        ok = {a: pred[a] == getattr(p, a) for a in ATTRIBUTES if getattr(p, a) is not None}
        items.append({"prompt": p.text, "pred": pred, **ok, "all": all(ok.values())})
    out: dict[str, Any] = {a: fraction([it[a] for it in items if a in it]) for a in (*ATTRIBUTES, "all")}
    out.update(n=len(items), items=items)
    return out


def main(argv: list[str] | None = None) -> int:
    """Measure the check on real clips: the probe's held-out fifth as is, resampled in time, played backwards."""
    from mmflow.metrics.probes.data import is_held_out, load_labelled_folder
    from mmflow.metrics.probes.train import probe_set

    p = argparse.ArgumentParser(prog="python -m mmflow.metrics.probes.emoji_video_check", description=main.__doc__)
    p.add_argument("--data", required=True, help="the emoji_video64 folder (videos/, metadata.jsonl)")
    p.add_argument("--all", action="store_true", help="every clip, not only the probe's held-out fifth")
    args = p.parse_args(argv)
    spec = probe_set("emoji_video")
    items = load_labelled_folder(args.data, spec.labels, spec.read, tag="emoji_video",
                                 only=None if args.all else is_held_out)
    clips, captions = items.media, [r["text"] for r in items.rows]  # (N, 3, 16, 64, 64)
    probe = load_probe(name="emoji_video")
    # a shorter or longer clip is resampled back to 16 frames by the check itself
    cases = {"as is (16 frames)": clips, **{f"16 -> {t} frames": resample_clips(clips, frames=t) for t in (9, 13, 17)},
             "played backwards": clips.flip(2), "32x32 frames": F.avg_pool3d(clips, (1, 2, 2))}
    print(f"{len(clips)} clips of {args.data} ({'all' if args.all else 'held out from the probe'})")
    for name, x in cases.items():
        s = score_emoji_video(x, captions, probe)
        print(f"{name:>20}: motion {s['motion']:.3f}, background {s['background']:.3f}, all {s['all']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
