"""The emoji_video prompt check: captions parse; the shipped probe reads emoji-like synthetic clips made
by the rules of ../shared/data/emoji_video64's README (no shared data needed)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from probe_media import StubProbe
from torch import Tensor

from mmflow.evaluation.config import CHECKS, EvalConfig
from mmflow.metrics.probes.base import ProbeInputError
from mmflow.metrics.probes.checks import PROMPT_CHECKS, prompt_check
from mmflow.metrics.probes.emoji_video import BACKGROUNDS, MOTIONS, reverse_motion
from mmflow.metrics.probes.emoji_video_check import (MOTION_PHRASES, BadEmojiCaption, parse_emoji_caption,
                                                     resample_clips, score_emoji_video)

# the backgrounds' RGB as the set's clips show them (median border pixels)
BACKGROUND_RGB = {"white": (255, 255, 255), "black": (0, 0, 0), "light gray": (210, 210, 210),
                  "light blue": (172, 214, 230), "light green": (189, 235, 178), "light yellow": (254, 247, 179),
                  "pink": (254, 190, 200), "dark blue": (18, 38, 109)}
SUPERSAMPLE = 4  # drawn at 4x and area-reduced to 64x64, as the set's clips (sub-pixel motion)


def _pose(motion: str, tau: float, across: float) -> tuple[float, float, float, float]:
    """Centre x, y (px), scale and clockwise angle (degrees) at time tau in [0, 15] (the set's 16-frame clock)."""
    u = tau / 15.0
    if motion in ("move_left", "move_right"):
        return (54 - 44 * u if motion == "move_left" else 10 + 44 * u), across, 1.0, 0.0
    if motion in ("move_up", "move_down"):
        return across, (54 - 44 * u if motion == "move_up" else 10 + 44 * u), 1.0, 0.0
    if motion in ("rotate_cw", "rotate_ccw"):
        return 32.0, 32.0, 1.0, 22.5 * tau * (1 if motion == "rotate_cw" else -1)
    if motion in ("zoom_in", "zoom_out"):
        return 32.0, 32.0, 0.5 * 3.2 ** u if motion == "zoom_in" else 1.6 / 3.2 ** u, 0.0
    v = (tau % 8) / 8  # bounce: two parabolic hops, on the floor at frames 0 and 8
    return across, 47 - 112 * v * (1 - v), 1.0, 0.0


def emoji_clip(motion: str, background: str, frames: int = 16, face: tuple[int, int, int] = (250, 200, 40),
               across: float = 32.0) -> Tensor:
    """(3, frames, 64, 64) in [-1, 1]: a smiling disk (~30 px, a red cap on one side so turns show)
    making `motion` over the whole clip on a plain `background`."""
    n = 64 * SUPERSAMPLE
    p = (torch.arange(n) + 0.5) / SUPERSAMPLE
    py, px = torch.meshgrid(p, p, indexing="ij")
    rgb = lambda c: torch.tensor(c, dtype=torch.float32).view(3, 1, 1) / 127.5 - 1  # noqa: E731
    out = []
    for t in range(frames):
        cx, cy, scale, degrees = _pose(motion, 15.0 * t / (frames - 1), across)
        a = math.radians(degrees)
        dx, dy = (px - cx) / scale, (py - cy) / scale
        qx, qy = dx * math.cos(a) + dy * math.sin(a), -dx * math.sin(a) + dy * math.cos(a)  # the emoji's own axes
        r = torch.sqrt(qx**2 + qy**2)
        layers = [(r < 15, face), ((r < 15) & (r > 13.5), (25, 10, 10)),
                  (((qx - 5) ** 2 + (qy + 4) ** 2 < 6) | ((qx + 5) ** 2 + (qy + 4) ** 2 < 6), (25, 10, 10)),
                  ((r < 9) & (r > 7) & (qy > 2), (25, 10, 10)), ((qy < -10) & (r < 15) & (qx > 0), (230, 30, 30))]
        img = rgb(BACKGROUND_RGB[background]).expand(3, n, n)
        for mask, colour in layers:
            img = torch.where(mask, rgb(colour), img)
        out.append(F.avg_pool2d(img[None], SUPERSAMPLE)[0])
    return torch.stack(out, dim=1)


def caption(motion: str, background: str, name: str = "smiling face") -> str:
    return f"a {name} {MOTION_PHRASES[motion]} on a {background} background"


def _set(frames: int = 16) -> tuple[Tensor, list[str], list[tuple[str, str]]]:
    """18 clips: every motion on two backgrounds (every background twice or more), off-centre tracks."""
    labels = [(m, BACKGROUNDS[(i + k * 4) % len(BACKGROUNDS)]) for i, m in enumerate(MOTIONS) for k in (0, 1)]
    clips = torch.stack([emoji_clip(m, b, frames, face=((250, 200, 40), (230, 60, 50))[i % 2],
                                    across=(24.0, 40.0)[i % 2]) for i, (m, b) in enumerate(labels)])
    return clips, [caption(m, b) for m, b in labels], labels


@pytest.fixture(scope="module")
def real_like() -> tuple[Tensor, list[str], list[tuple[str, str]]]:
    return _set()


@pytest.mark.parametrize("motion", MOTIONS)
def test_every_motion_phrase_parses(motion: str) -> None:
    p = parse_emoji_caption(caption(motion, "light blue", name="red apple"))
    assert (p.motion, p.background) == (motion, "light blue")


@pytest.mark.parametrize("background", BACKGROUNDS)
def test_every_background_parses(background: str) -> None:
    assert parse_emoji_caption(f"an oyster zooming out on a {background} background").background == background


def test_the_motion_is_the_last_phrase_not_the_emoji_name() -> None:
    p = parse_emoji_caption("Anticlockwise downwards and upwards open circle arrows rotating clockwise on a "
                            "light yellow background")
    assert (p.motion, p.background) == ("rotate_cw", "light yellow")
    p = parse_emoji_caption("a person bouncing ball moving to the left on a pink background")
    assert p.motion == "move_left"


def test_a_caption_may_name_one_attribute() -> None:
    assert parse_emoji_caption("a cat bouncing").background is None
    assert parse_emoji_caption("a cat on a black background").motion is None


def test_a_caption_naming_neither_is_named() -> None:
    with pytest.raises(BadEmojiCaption, match="'a cat sitting still'"):
        parse_emoji_caption("a cat sitting still")
    with pytest.raises(BadEmojiCaption, match="'purple'"):
        parse_emoji_caption("a cat bouncing on a purple background")


def test_resample_keeps_the_end_frames_and_sizes() -> None:
    clips = torch.rand(2, 3, 9, 32, 32) * 2 - 1
    out = resample_clips(clips)
    assert out.shape == (2, 3, 16, 64, 64)
    ends = resample_clips(clips, size=32)
    assert torch.allclose(ends[:, :, 0], clips[:, :, 0]) and torch.allclose(ends[:, :, -1], clips[:, :, -1])
    ramp = torch.linspace(0, 1, 9).view(1, 1, 9, 1, 1).expand(1, 3, 9, 64, 64)  # linear in time: kept exactly
    assert torch.allclose(resample_clips(ramp)[0, 0, :, 5, 7], torch.linspace(0, 1, 16), atol=1e-6)


def stub(motion: list[str], background: list[str]) -> StubProbe:
    """A stub emoji-clip probe predicting these motions and backgrounds, item by item."""
    return StubProbe({"motion": MOTIONS, "background": BACKGROUNDS},
                     {"motion": motion, "background": background})


def test_check_plumbing_with_a_stub_probe() -> None:
    clips = torch.randn(3, 3, 13, 32, 32) * 3  # out of range, small, 13 frames
    probe = stub(["move_left", "bounce", "zoom_in"], ["white", "pink", "black"])
    prompts = [caption("move_left", "white"), caption("rotate_cw", "pink"), "a cat zooming in"]
    s = score_emoji_video(clips, prompts, probe, batch_size=2)
    assert [tuple(x.shape) for x in probe.seen] == [(2, 3, 16, 64, 64), (1, 3, 16, 64, 64)]
    assert all(x.abs().max() <= 1.0 for x in probe.seen)
    assert s["motion"] == pytest.approx(2 / 3) and s["background"] == 1.0 and s["all"] == pytest.approx(2 / 3)
    assert s["items"][1]["pred"] == {"motion": "bounce", "background": "pink"} and not s["items"][1]["all"]
    assert "background" not in s["items"][2] and s["items"][2]["all"]
    only_motion = score_emoji_video(clips, ["a cat bouncing"] * 3, stub(["bounce"] * 3, ["white"] * 3))
    assert math.isnan(only_motion["background"]) and only_motion["motion"] == 1.0


def test_bad_clips_are_refused() -> None:
    with pytest.raises(ProbeInputError, match="1 clips but 2 prompts"):
        score_emoji_video(torch.zeros(1, 3, 9, 64, 64), ["a cat bouncing"] * 2, stub([], []))
    with pytest.raises(ProbeInputError, match=r"\(1, 3, 64, 64\)"):
        score_emoji_video(torch.zeros(1, 3, 64, 64), ["a cat bouncing"], stub([], []))


def test_the_shipped_probe_reads_real_like_clips(real_like) -> None:
    clips, prompts, labels = real_like
    s = prompt_check("emoji_video", clips, prompts)
    assert s["motion"] >= 0.9 and s["background"] >= 0.9 and s["all"] >= 0.85, s
    # the same clips asked for another motion (the reverse one; bounce: zooming in) and another background
    other = [caption(MOTIONS[reverse_motion[MOTIONS.index(m)]] if m != "bounce" else "zoom_in",
                     BACKGROUNDS[(BACKGROUNDS.index(b) + 3) % len(BACKGROUNDS)]) for m, b in labels]
    wrong = prompt_check("emoji_video", clips, other)
    assert wrong["motion"] <= 0.1 and wrong["background"] <= 0.1, wrong
    # played backwards: only the bounces (2 of 18) still match their captions
    assert prompt_check("emoji_video", clips.flip(2), prompts)["motion"] <= 0.25


@pytest.mark.parametrize("frames", [9, 13, 17])
def test_generated_lengths_are_resampled(frames: int) -> None:
    clips, prompts, _ = _set(frames)
    s = score_emoji_video(clips, prompts)
    assert s["motion"] >= 0.85 and s["background"] >= 0.9, s
    big = score_emoji_video(clips.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2), prompts)  # 128x128
    assert big["motion"] >= 0.85 and big["background"] >= 0.9, big


def test_the_check_is_registered_for_recipes() -> None:
    assert set(CHECKS) == set(PROMPT_CHECKS) and "emoji_video" in CHECKS
    EvalConfig(check="emoji_video").validate()
