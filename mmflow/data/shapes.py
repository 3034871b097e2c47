"""Shapes: a generated compositional text-to-image set (GenEval's idea on data a CPU learns in minutes).

64x64 RGB images of one or two flat objects on a white background, each with its caption and the
attributes the caption states, so a probe (mmflow.metrics.probes.shapes) can check a sample exactly:

    one object:  "a small red circle in the top left"       shape, colour, position (3x3 grid), size
    two objects: "a blue square to the left of a yellow star"  two (colour, shape) pairs and a relation

Some colour-shape pairs never appear in the train split, alone or in a pair (`held_out_pairs`: by
default every purple triangle and one shape per colour, by the rule in its docstring); the test
prompts are exactly those combinations, so the test measures composition, not memory.

    cfg = ShapesConfig(n_one=4000, n_two=2000, seed=0)
    items = make_shapes(cfg)                          # list[ShapeItem], the train split
    write_shapes_folder("data/shapes/train", cfg)     # PNGs + metadata.jsonl (file_name, text, attributes)
    test_prompts(cfg)                                 # list[ShapePrompt]: the held-out prompts

    python -m mmflow.data.shapes --out data/shapes/train --split train   # ~6000 images in seconds
    python -m mmflow.data.shapes --out data/shapes/test --split test

Item i of a split is drawn from a generator seeded by (seed, split, kind, i) only, so the same config
gives the same images byte for byte, and any prefix of a larger set is the smaller set. Objects are
drawn 4x larger with PIL and area-downsampled (anti-aliasing by supersampling).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from mmflow.config import check
from mmflow.errors import UserError

__all__ = ["BACKGROUND", "COLOURS", "EXTRA_COLOURS", "IMAGE_SIZE", "PALETTE", "POSITIONS", "RELATIONS", "SHAPES",
           "SIZES", "CaptionError", "ShapeItem", "ShapePrompt", "ShapeSpec", "ShapesConfig", "caption", "draw",
           "held_out_pairs", "make_shapes", "parse_caption", "position_of", "relation_of", "render", "rotate_polygon",
           "test_prompts", "write_items", "write_shapes_folder"]

IMAGE_SIZE = 64
SUPERSAMPLE = 4  # drawn at 4x and area-downsampled: anti-aliased edges
BACKGROUND = (255, 255, 255)  # white: no hue, never an object colour
# Hues (HSV degrees) 0, 28, 57, 134, 222, 273, 326: neighbours at least 28 degrees apart, all saturated.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "orange": (250, 125, 15), "yellow": (235, 225, 20), "green": (40, 170, 70),
    "blue": (35, 95, 230), "purple": (140, 55, 210), "pink": (240, 90, 175)}
# Colours no default split draws: a concept set (mmflow.data.shapes_concept) teaches a trained model one of them.
# Cyan's hue, 186 degrees, is 36 from blue's and 52 from green's, so the probe's nearest-hue rule still holds.
EXTRA_COLOURS: dict[str, tuple[int, int, int]] = {"cyan": (20, 195, 215)}
PALETTE = {**COLOURS, **EXTRA_COLOURS}  # every colour a caption may name, an image show and the probe read
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
SIZES = ("small", "large")
# The 3x3 grid, row by row; an object is in the cell its centroid is in.
POSITIONS = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right")
RELATIONS = ("left of", "right of", "above", "below")
# How a caption says a position / relation ("on the left" reads better than "in the left").
_POSITION_PHRASE = {"top left": "in the top left", "top": "at the top", "top right": "in the top right",
                    "left": "on the left", "centre": "in the centre", "right": "on the right",
                    "bottom left": "in the bottom left", "bottom": "at the bottom",
                    "bottom right": "in the bottom right"}
_RELATION_PHRASE = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}

# Object side in pixels (every shape spans 0.95..1 of it): small and large are >= 6 px apart, so the
# probe's size threshold (16 px) is far from both; two-object images use one untold middle size.
SIDE = {"small": (11.0, 13.0), "large": (19.0, 21.0)}
PAIR_SIDE = (14.0, 17.0)
JITTER = 2.5  # px a single object's centre moves around its cell centre (cells are 21.3 px wide)
PAIR_GAP = (26.0, 40.0)  # px between the two objects' centres along the relation's axis
PAIR_OFFSET = 6.0  # at most this many px across it, so the relation is never ambiguous
HELD_OUT_SHIFT = 3  # the diagonal rule of held_out_pairs; 3 makes purple (5) -> triangle (2)


class CaptionError(UserError, ValueError):
    """A caption that is not one this set writes (parse_caption names it)."""


@dataclass(frozen=True)
class ShapeSpec:
    """One object: its colour and shape; position and size are stated for one-object images only."""

    shape: str
    colour: str
    position: str | None = None  # a POSITIONS name
    size: str | None = None  # a SIZES name


@dataclass(frozen=True)
class ShapePrompt:
    """What a caption states: one object, or two objects and the relation of the first to the second."""

    objects: tuple[ShapeSpec, ...]
    relation: str | None = None  # a RELATIONS name (two objects)

    @property
    def kind(self) -> str:
        return "one" if len(self.objects) == 1 else "two"

    @property
    def text(self) -> str:
        return caption(self)

    def to_dict(self) -> dict[str, Any]:
        """The JSON attributes of a metadata.jsonl line (without file_name and text)."""
        objs = [{k: v for k, v in vars(o).items() if v is not None} for o in self.objects]
        return {"kind": self.kind, "objects": objs, "relation": self.relation}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShapePrompt:
        return cls(tuple(ShapeSpec(**o) for o in d["objects"]), d.get("relation"))


@dataclass
class ShapeItem:
    """A generated image (64, 64, 3) uint8, its caption, what the caption states, and where the objects are."""

    image: np.ndarray
    prompt: ShapePrompt
    centres: list[tuple[float, float]]  # (x, y) px of each object's bounding-box centre, in prompt order
    sides: list[float]  # px, each object's side

    @property
    def caption(self) -> str:
        return self.prompt.text


@dataclass
class ShapesConfig:
    """How many images of each kind, the seed, and which colour-shape pairs the train split never shows."""

    n_one: int = 4000  # one-object train images
    n_two: int = 2000  # two-object train images
    n_test_two: int = 64  # two-object test prompts (one-object ones: every held-out pair x position x size)
    seed: int = 0
    colours: list[str] = field(default_factory=lambda: list(COLOURS))  # a subset of COLOURS
    shapes: list[str] = field(default_factory=lambda: list(SHAPES))  # a subset of SHAPES
    held_out: list[list[str]] | None = None  # [colour, shape] pairs never in train; None: the diagonal rule

    def validate(self) -> None:
        check(self.n_one >= 0 and self.n_two >= 0 and self.n_test_two >= 0, "n_one", "counts must be >= 0")
        unknown = [c for c in self.colours if c not in COLOURS]
        check(not unknown, "colours", f"unknown colours {unknown}; known: {list(COLOURS)}")
        unknown = [s for s in self.shapes if s not in SHAPES]
        check(not unknown, "shapes", f"unknown shapes {unknown}; known: {list(SHAPES)}")
        check(len(set(self.colours)) >= 2, "colours", "two-object images need at least two colours")
        pairs = held_out_pairs(self)
        bad = [p for p in pairs if p[0] not in self.colours or p[1] not in self.shapes]
        check(not bad, "held_out", f"pairs {bad} use a colour or shape not in colours/shapes")
        check(len(pairs) < len(self.colours) * len(self.shapes), "held_out", "holds out every colour-shape pair")


def held_out_pairs(cfg: ShapesConfig) -> list[tuple[str, str]]:
    """The (colour, shape) pairs of the test split, sorted.

    Default (cfg.held_out None), the diagonal rule: colour number c (in COLOURS order) is held out with
    shape number (c + 3) mod 6 (in SHAPES order), restricted to cfg's colours and shapes:
    red star, orange cross, yellow diamond, green circle, blue square, purple triangle, pink star.
    Every colour and every shape still appears in training with other partners.
    """
    if cfg.held_out is not None:
        return sorted((str(c), str(s)) for c, s in cfg.held_out)
    names = list(COLOURS)
    pairs = [(c, SHAPES[(names.index(c) + HELD_OUT_SHIFT) % len(SHAPES)]) for c in cfg.colours]
    return sorted(p for p in pairs if p[1] in cfg.shapes)


# ---------------------------------------------------------------- captions

def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(o: ShapeSpec, with_size: bool) -> str:
    words = ([o.size] if with_size and o.size else []) + [o.colour, o.shape]
    return f"{_article(words[0])} {' '.join(words)}"


def caption(prompt: ShapePrompt) -> str:
    """'a small red circle in the top left' / 'a blue square to the left of a yellow star'."""
    if prompt.kind == "one":
        o = prompt.objects[0]
        return f"{_noun_phrase(o, True)} {_POSITION_PHRASE[o.position]}"
    a, b = prompt.objects
    return f"{_noun_phrase(a, False)} {_RELATION_PHRASE[prompt.relation]} {_noun_phrase(b, False)}"


def _object_pattern(with_size: bool) -> str:
    size = f"(?:({'|'.join(SIZES)}) )?" if with_size else ""
    return f"an? {size}({'|'.join(PALETTE)}) ({'|'.join(SHAPES)})"


_ONE_RE = re.compile(f"^{_object_pattern(True)} ({'|'.join(_POSITION_PHRASE.values())})$")
_TWO_RE = re.compile(f"^{_object_pattern(False)} ({'|'.join(_RELATION_PHRASE.values())}) {_object_pattern(False)}$")


def parse_caption(text: str) -> ShapePrompt:
    """The inverse of `caption`: what a caption of this set states (CaptionError for any other text)."""
    t = " ".join(text.strip().lower().split())
    if m := _ONE_RE.match(t):
        size, colour, shape, where = m.groups()
        pos = next(k for k, v in _POSITION_PHRASE.items() if v == where)
        return ShapePrompt((ShapeSpec(shape, colour, pos, size),))
    if m := _TWO_RE.match(t):
        c1, s1, rel, c2, s2 = m.groups()
        relation = next(k for k, v in _RELATION_PHRASE.items() if v == rel)
        return ShapePrompt((ShapeSpec(s1, c1), ShapeSpec(s2, c2)), relation)
    raise CaptionError(f"{text!r} is not a shapes caption (like 'a small red circle in the top left' or "
                       f"'a blue square to the left of a yellow star')")


# ---------------------------------------------------------------- geometry

def position_of(x: float, y: float, size: int = IMAGE_SIZE) -> str:
    """The POSITIONS cell of the point (x, y) px: thirds of the image."""
    col, row = min(int(3 * x / size), 2), min(int(3 * y / size), 2)
    return POSITIONS[3 * max(row, 0) + max(col, 0)]


def relation_of(a: tuple[float, float], b: tuple[float, float]) -> str:
    """Where point a is relative to point b, along the axis they differ most on (image y points down)."""
    dx, dy = a[0] - b[0], a[1] - b[1]
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def _polygon(shape: str, cx: float, cy: float, s: float) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape of side s centred (by bounding box) at (cx, cy)."""
    h = s / 2
    if shape == "square":
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "diamond":
        return [(cx, cy - h), (cx + h, cy), (cx, cy + h), (cx - h, cy)]
    if shape == "star":  # five points; the outer circle is shifted down so the bounding box is centred
        r_out, r_in = h, 0.45 * h
        cy += 0.5 * (r_out - r_out * np.cos(np.pi / 5))
        return [(cx + r * np.sin(k * np.pi / 5), cy - r * np.cos(k * np.pi / 5))
                for k, r in zip(range(10), [r_out, r_in] * 5)]
    if shape == "cross":  # a plus sign, arms a third of the side wide
        w = s / 6
        return [(cx - w, cy - h), (cx + w, cy - h), (cx + w, cy - w), (cx + h, cy - w), (cx + h, cy + w),
                (cx + w, cy + w), (cx + w, cy + h), (cx - w, cy + h), (cx - w, cy + w), (cx - h, cy + w),
                (cx - h, cy - w), (cx - w, cy - w)]
    raise ValueError(f"unknown shape {shape!r}; known: {list(SHAPES)}")


def rotate_polygon(points: Sequence[tuple[float, float]], degrees: float) -> list[tuple[float, float]]:
    """The polygon turned `degrees` clockwise on screen (image y points down) about its area centroid
    (so a turning triangle or star stays in place)."""
    p = np.asarray(points, dtype=np.float64)
    q = np.roll(p, -1, axis=0)
    cross = p[:, 0] * q[:, 1] - q[:, 0] * p[:, 1]  # shoelace
    centre = ((p + q) * cross[:, None]).sum(0) / (3.0 * cross.sum())
    a = np.deg2rad(degrees)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])  # (x, y) -> clockwise with y down
    return [(float(x), float(y)) for x, y in (p - centre) @ rot.T + centre]


def render(objects: Sequence[tuple[str, str, float, float, float]],
           background: tuple[int, int, int] = BACKGROUND, angles: Sequence[float] | None = None) -> np.ndarray:
    """Objects (shape, colour, centre x, centre y, side), in px of the 64x64 image, each turned
    angles[i] degrees clockwise (None: upright) -> (64, 64, 3) uint8 on `background` (RGB)."""
    k = SUPERSAMPLE
    img = Image.new("RGB", (IMAGE_SIZE * k, IMAGE_SIZE * k), tuple(background))
    draw = ImageDraw.Draw(img)
    for i, (shape, colour, cx, cy, s) in enumerate(objects):
        fill = PALETTE[colour]
        if shape == "circle":  # turning a circle changes nothing
            draw.ellipse([k * (cx - s / 2), k * (cy - s / 2), k * (cx + s / 2), k * (cy + s / 2)], fill=fill)
        else:
            points = _polygon(shape, cx, cy, s)
            if angles is not None and angles[i]:
                points = rotate_polygon(points, angles[i])
            draw.polygon([(k * x, k * y) for x, y in points], fill=fill)
    return np.asarray(img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX), dtype=np.uint8)


# ---------------------------------------------------------------- sampling

_SPLITS = {"train": 0, "test": 1}
_STREAMS = {"one": 0, "two": 1, "two_prompt": 2}  # independent random streams per item
_CELL = IMAGE_SIZE / 3


def _rng(cfg: ShapesConfig, split: str, kind: str, i: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, _SPLITS[split], _STREAMS[kind], i])


def _place_one(spec: ShapeSpec, rng: np.random.Generator) -> tuple[float, float, float]:
    """(cx, cy, side) of a one-object image: jittered around its cell centre, wholly inside the image."""
    s = rng.uniform(*SIDE[spec.size])
    row, col = divmod(POSITIONS.index(spec.position), 3)
    lo, hi = s / 2 + 1, IMAGE_SIZE - 1 - s / 2
    cx = float(np.clip((col + 0.5) * _CELL + rng.uniform(-JITTER, JITTER), lo, hi))
    cy = float(np.clip((row + 0.5) * _CELL + rng.uniform(-JITTER, JITTER), lo, hi))
    return cx, cy, s


def _place_two(relation: str, rng: np.random.Generator) -> tuple[list[tuple[float, float]], float]:
    """Centres of (first, second) object so that the first is `relation` the second, and their side."""
    s = rng.uniform(*PAIR_SIDE)
    lo, hi = s / 2 + 1, IMAGE_SIZE - 1 - s / 2
    gap = rng.uniform(*PAIR_GAP)
    mid = rng.uniform(lo + gap / 2, hi - gap / 2)  # along the relation's axis
    across = rng.uniform(lo, hi)
    other = float(np.clip(across + rng.uniform(-PAIR_OFFSET, PAIR_OFFSET), lo, hi))
    sign = -1.0 if relation in ("left of", "above") else 1.0  # the first object is before the second
    first, second = (mid + sign * gap / 2, across), (mid - sign * gap / 2, other)
    if relation in ("above", "below"):
        first, second = first[::-1], second[::-1]
    return [first, second], s


def _choice(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _one_prompt(cfg: ShapesConfig, rng: np.random.Generator, pairs: Sequence[tuple[str, str]]) -> ShapePrompt:
    colour, shape = _choice(rng, pairs)
    return ShapePrompt((ShapeSpec(shape, colour, _choice(rng, POSITIONS), _choice(rng, SIZES)),))


def _two_prompt(rng: np.random.Generator, first: Sequence[tuple[str, str]],
                second: Sequence[tuple[str, str]]) -> ShapePrompt:
    """A pair from `first` and one of another colour from `second`, in random order, and a relation."""
    a = _choice(rng, first)
    b = _choice(rng, [p for p in second if p[0] != a[0]])
    if rng.random() < 0.5:
        a, b = b, a
    return ShapePrompt((ShapeSpec(a[1], a[0]), ShapeSpec(b[1], b[0])), _choice(rng, RELATIONS))


def draw(prompt: ShapePrompt, rng: np.random.Generator) -> ShapeItem:
    """The image of `prompt`, its objects placed (and one-object sides drawn) from `rng`."""
    if prompt.kind == "one":
        o = prompt.objects[0]
        cx, cy, s = _place_one(o, rng)
        return ShapeItem(render([(o.shape, o.colour, cx, cy, s)]), prompt, [(cx, cy)], [s])
    centres, s = _place_two(prompt.relation, rng)
    objs = [(o.shape, o.colour, x, y, s) for o, (x, y) in zip(prompt.objects, centres)]
    return ShapeItem(render(objs), prompt, centres, [s, s])


def _pairs(cfg: ShapesConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train pairs, held-out pairs) of colour and shape."""
    held = held_out_pairs(cfg)
    return [(c, s) for c in cfg.colours for s in cfg.shapes if (c, s) not in held], held


def test_prompts(cfg: ShapesConfig) -> list[ShapePrompt]:
    """The held-out prompts: every held-out pair at every position and size, then cfg.n_test_two
    two-object prompts each with at least one held-out pair (the other of any other colour)."""
    cfg.validate()
    train, held = _pairs(cfg)
    one = [ShapePrompt((ShapeSpec(s, c, p, z),)) for c, s in held for p in POSITIONS for z in SIZES]
    two = [_two_prompt(_rng(cfg, "test", "two_prompt", i), held, train + held) for i in range(cfg.n_test_two)]
    return one + two


test_prompts.__test__ = False  # type: ignore[attr-defined]  (not a pytest test, whatever its name)


def make_shapes(cfg: ShapesConfig, split: str = "train") -> list[ShapeItem]:
    """The split's images: train, cfg.n_one one-object then cfg.n_two two-object images of train pairs
    only; test, one image of each test prompt. Deterministic in cfg (see the module docstring)."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {list(_SPLITS)}, got {split!r}")
    cfg.validate()
    if split == "test":
        return [draw(p, _rng(cfg, "test", p.kind, i)) for i, p in enumerate(test_prompts(cfg))]
    train, _ = _pairs(cfg)
    items = []
    for i in range(cfg.n_one):
        rng = _rng(cfg, "train", "one", i)
        items.append(draw(_one_prompt(cfg, rng, train), rng))
    for i in range(cfg.n_two):
        rng = _rng(cfg, "train", "two", i)
        items.append(draw(_two_prompt(rng, train, train), rng))
    return items


def write_shapes_folder(folder: str | Path, cfg: ShapesConfig, split: str = "train") -> Path:
    """Write the split into `folder` as an image folder: one_00000.png ..., two_00000.png ... (see
    write_items); returns the folder."""
    items = make_shapes(cfg, split)
    counts = {"one": 0, "two": 0}
    named = []
    for item in items:
        kind = item.prompt.kind
        named.append((f"{kind}_{counts[kind]:05d}.png", item))
        counts[kind] += 1
    return write_items(folder, named)


def write_items(folder: str | Path, named: Sequence[tuple[str, ShapeItem]]) -> Path:
    """Write (file name, item) pairs into `folder` as an image folder: the PNGs and metadata.jsonl lines
    {"file_name", "text", "kind", "objects": [{shape, colour[, position, size]}], "relation"}; returns the
    folder. Files of an earlier write are overwritten, never merged."""
    from mmflow.utils.fs import atomic_folder

    with atomic_folder(folder) as tmp:
        lines = []
        for name, item in named:
            Image.fromarray(item.image).save(tmp / name)
            lines.append(json.dumps({"file_name": name, "text": item.caption, **item.prompt.to_dict()}))
        (tmp / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return Path(folder)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmflow.data.shapes", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the folder to write (replaced if it exists)")
    p.add_argument("--split", choices=list(_SPLITS), default="train")
    p.add_argument("--n-one", type=int, default=ShapesConfig.n_one, help="one-object train images")
    p.add_argument("--n-two", type=int, default=ShapesConfig.n_two, help="two-object train images")
    p.add_argument("--n-test-two", type=int, default=ShapesConfig.n_test_two, help="two-object test prompts")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cfg = ShapesConfig(n_one=args.n_one, n_two=args.n_two, n_test_two=args.n_test_two, seed=args.seed)
    write_shapes_folder(args.out, cfg, args.split)
    n = sum(1 for _ in (args.out / "metadata.jsonl").open())
    print(f"wrote {n} {args.split} images to {args.out}; held out: "
          f"{', '.join(f'{c} {s}' for c, s in held_out_pairs(cfg))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
