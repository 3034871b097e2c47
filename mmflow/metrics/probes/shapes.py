"""The shapes probe: is what a sample shows what its shapes prompt (mmflow.data.shapes) asked for?

Rules where a rule is exact, a small classifier where it is not:
- objects: pixels further than FG_THRESHOLD (max over channels, in [0, 1]) from the background (the
  median of the border pixels), split into 8-connected components of at least MIN_AREA pixels; a
  two-object prompt whose objects touch in the sample (one component) is split by pixel colour;
- colour: a vote of the object's core pixels, each for the named colour of nearest hue among every colour
  the set can draw (PALETTE: COLOURS and the concept sets' EXTRA_COLOURS, hues >= 28 degrees apart; mixing
  with the white background keeps a pixel's hue), so a model drifting from blue to a taught cyan is caught;
- position: the 3x3 cell of the object's centroid; relation: the centroids' displacement along the
  axis it is largest on; size: the larger side of the bounding box against SIZE_THRESHOLD px (the
  area depends on the shape too much: a star fills a third of what a square of its size does);
- shape: a small CNN on the object's mask, cropped square around its bounding box and resampled to
  32x32 (so it sees neither colour, position nor size), trained on crops of the generated train split,
  half of them blurred and noised so that imperfect samples still read as their shape.

    probe = load_probe(name="shapes")                     # checkpoints/probes/shapes/
    score = score_shapes(images, captions)                # images (B, 3, 64, 64) in [-1, 1]
    score["all"], score["two_all"], score["items"][0]     # accuracies; per-item correctness

Retrain (about a minute on one CPU core; no data folder needed, the set is generated):

    python -m mmflow.metrics.probes.train_shapes --out checkpoints/probes/shapes
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor, nn

from mmflow.data.shapes import (IMAGE_SIZE, PALETTE, POSITIONS, SHAPES, SIZES, ShapeItem, ShapePrompt, ShapesConfig,
                                make_shapes, parse_caption, position_of, relation_of)
from mmflow.metrics.probes.base import Probe, ProbeConfig, ProbeInputError, fraction, load_probe
from mmflow.model_io import register_model

__all__ = ["CROP", "FoundObject", "ShapesProbe", "find_objects", "hue_degrees", "nearest_colour", "score_shapes",
           "shapes_config", "train_shapes_probe"]

logger = logging.getLogger("mmflow.probes")

FG_THRESHOLD = 0.25  # a pixel this far from the background (max over channels, [0, 1] units) is an object's
CORE_THRESHOLD = 0.5  # pixels this far vote on the colour (edges are half background)
MIN_AREA = 12  # px; smaller components are specks (the smallest small star covers ~35 px)
SIZE_THRESHOLD = 16.0  # px of bounding-box side between small (<= 13.4) and large (>= 18)
CROP = 32  # side of the mask crop the shape classifier reads


def hue_degrees(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) RGB in [0, 1] -> (...,) HSV hue in degrees [0, 360) (0 where the pixel is grey)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(-1), rgb.min(-1)
    d = np.where(mx - mn > 1e-6, mx - mn, 1.0)
    h = np.where(mx == r, (g - b) / d % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4))
    return np.where(mx - mn > 1e-6, 60.0 * h, 0.0) % 360.0


PALETTE_HUES = hue_degrees(np.array(list(PALETTE.values()), dtype=np.float64) / 255.0)


def nearest_colour(hues: np.ndarray) -> np.ndarray:
    """(N,) hues in degrees -> (N,) index into PALETTE of the named colour of nearest hue (on the circle)."""
    d = np.abs(hues[:, None] - PALETTE_HUES[None, :]) % 360.0
    return np.minimum(d, 360.0 - d).argmin(1)


@dataclass
class FoundObject:
    """One object the rules found in an image: where, how big, what colour, and its mask crop for the shape."""

    area: int  # px
    centroid: tuple[float, float]  # (x, y) px
    extent: float  # px, the larger side of the bounding box
    colour: str
    colour_share: float  # fraction of the core pixels that voted for `colour`
    crop: np.ndarray  # (CROP, CROP) float32 in [0, 1]: the object's mask, square around its bounding box

    @property
    def position(self) -> str:
        return position_of(*self.centroid)

    @property
    def size(self) -> str:
        return SIZES[int(self.extent > SIZE_THRESHOLD)]


def _crop(alpha: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """The square around the bounding box of pixels (ys, xs) (1 px margin), bilinearly resampled to CROP x CROP."""
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    half = (max(ys.max() - ys.min(), xs.max() - xs.min()) + 1) / 2 + 1
    grid = cy - half + (np.arange(CROP) + 0.5) * (2 * half / CROP) - 0.5  # pixel-centre coordinates
    gx = cx - half + (np.arange(CROP) + 0.5) * (2 * half / CROP) - 0.5
    yy, xx = np.meshgrid(grid, gx, indexing="ij")
    return ndimage.map_coordinates(alpha, [yy, xx], order=1, mode="constant", cval=0.0).astype(np.float32)


def _object(rgb: np.ndarray, diff: np.ndarray, region: np.ndarray) -> FoundObject:
    """The FoundObject of the pixels `region` (H, W) bool of an image rgb (H, W, 3) in [0, 1]."""
    ys, xs = np.nonzero(region)
    core = region & (diff > CORE_THRESHOLD)
    votes = nearest_colour(hue_degrees(rgb[core if core.sum() >= 3 else region]))
    counts = np.bincount(votes, minlength=len(PALETTE))
    # the crop sees the component and its anti-aliased rim, not a neighbouring object; contrast-normalised
    # (yellow on white is fainter than blue on white)
    near = ndimage.binary_dilation(region, iterations=1)
    contrast = max(float(np.percentile(diff[region], 90)), 1e-3)
    alpha = np.where(near, np.clip(diff / contrast, 0.0, 1.0), 0.0)
    return FoundObject(area=int(region.sum()), centroid=(float(xs.mean()) + 0.5, float(ys.mean()) + 0.5),
                       extent=float(max(ys.max() - ys.min(), xs.max() - xs.min()) + 1),
                       colour=list(PALETTE)[int(counts.argmax())], colour_share=float(counts.max() / counts.sum()),
                       crop=_crop(alpha, ys, xs))


def find_objects(image: np.ndarray | Tensor, expect: int = 1) -> list[FoundObject]:
    """Objects of one image (3, H, W) in [-1, 1], largest first. With expect=2 and a single component,
    the component is split by pixel colour (two touching objects of different colours)."""
    x = image.detach().float().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image, dtype=np.float64)
    rgb = np.clip((np.transpose(x, (1, 2, 0)) + 1.0) / 2.0, 0.0, 1.0)  # (H, W, 3) in [0, 1]
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    diff = np.abs(rgb - np.median(border, axis=0)).max(-1)  # (H, W)
    labels, n = ndimage.label(diff > FG_THRESHOLD, structure=np.ones((3, 3)))
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    regions = [labels == k + 1 for k in np.argsort(-areas, kind="stable") if areas[k] >= MIN_AREA]
    if expect == 2 and len(regions) == 1:
        region = regions[0]
        classes = np.full(region.shape, -1)
        classes[region] = nearest_colour(hue_degrees(rgb[region]))
        counts = np.bincount(classes[region], minlength=len(PALETTE))
        top = [c for c in np.argsort(-counts, kind="stable")[:2] if counts[c] >= MIN_AREA]
        if len(top) == 2:
            regions = [classes == c for c in top]
    return [_object(rgb, diff, r) for r in regions]


# ---------------------------------------------------------------- the shape classifier

def shapes_config(**overrides: Any) -> ProbeConfig:
    """The config of a fresh shapes probe: the classifier's shape head plus the rules' attributes."""
    base = dict(name="shapes", modality="image", media_shape=[3, IMAGE_SIZE, IMAGE_SIZE],
                attributes={"shape": list(SHAPES), "colour": list(PALETTE), "position": list(POSITIONS),
                            "size": list(SIZES)}, width=16, feature_dim=64)
    base.update(overrides)
    return ProbeConfig(**base)


@register_model("probe_shapes")
class ShapesProbe(Probe):
    """Images (B, 3, 64, 64) in [-1, 1] -> the largest object's shape logits (B, 6) from its mask crop;
    `predict` adds its colour, position and size by the rules. Features: the CNN's hidden layer (B, 64)."""

    def __init__(self, config: ProbeConfig) -> None:
        super().__init__(config)
        w, d = config.width, config.feature_dim
        self.convs = nn.ModuleList([nn.Conv2d(1, w, 3, stride=2, padding=1),  # -> 16x16
                                    nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),  # -> 8x8
                                    nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1)])  # -> 4x4
        self.hidden = nn.Linear(4 * w * 16, d)
        self.heads = nn.ModuleDict({"shape": nn.Linear(d, len(config.attributes["shape"]))})

    def prepare(self, media: Tensor) -> dict[str, Tensor]:
        """(B, 3, 64, 64) -> {"crop": (B, 1, 32, 32)}: the largest object's mask crop (zeros if none)."""
        crops = []
        for img in media:
            found = find_objects(img)
            crops.append(found[0].crop if found else np.zeros((CROP, CROP), np.float32))
        return {"crop": torch.from_numpy(np.stack(crops))[:, None].to(media.device)}

    def embed(self, prepared: dict[str, Tensor]) -> Tensor:
        """{"crop": (B, 1, 32, 32)} -> (B, feature_dim)."""
        x = prepared["crop"].float() * 2 - 1
        for conv in self.convs:
            x = F.gelu(conv(x))  # (B, w, 16, 16) -> (B, 2w, 8, 8) -> (B, 4w, 4, 4)
        return F.gelu(self.hidden(x.flatten(1)))

    def prepared_logits(self, prepared: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"shape": self.heads["shape"](self.embed(prepared))}

    @torch.no_grad()
    def classify(self, crops: Sequence[np.ndarray]) -> list[str]:
        """Mask crops (CROP, CROP) -> their shape names."""
        if not len(crops):
            return []
        x = torch.from_numpy(np.stack(crops))[:, None].to(next(self.parameters()).device)
        return [SHAPES[int(k)] for k in self.prepared_logits({"crop": x})["shape"].argmax(1).cpu()]

    @torch.no_grad()
    def predict(self, media: Tensor, batch_size: int = 64) -> dict[str, Tensor]:
        """(B, 3, 64, 64) -> {shape, colour, position, size: (B,) long} of the largest object
        (class 0 of each where no object is found)."""
        self.check_input(media)
        out: dict[str, list[int]] = {a: [] for a in self.attributes}
        for img in media:
            found = find_objects(img)
            o = found[0] if found else None
            out["shape"] += [SHAPES.index(self.classify([o.crop])[0]) if o else 0]
            out["colour"] += [list(PALETTE).index(o.colour) if o else 0]
            out["position"] += [POSITIONS.index(o.position) if o else 0]
            out["size"] += [SIZES.index(o.size) if o else 0]
        return {a: torch.tensor(v, dtype=torch.long) for a, v in out.items()}


# ---------------------------------------------------------------- scoring

def _as_prompt(p: str | ShapePrompt | dict) -> ShapePrompt:
    if isinstance(p, ShapePrompt):
        return p
    return parse_caption(p) if isinstance(p, str) else ShapePrompt.from_dict(p)


def _describe(o: FoundObject, shape: str) -> dict[str, Any]:
    return {"shape": shape, "colour": o.colour, "position": o.position, "size": o.size,
            "centroid": [round(c, 2) for c in o.centroid], "extent": o.extent}


def _score_one(prompt: ShapePrompt, found: list[FoundObject], shapes: list[str]) -> dict[str, Any]:
    want = prompt.objects[0]
    item: dict[str, Any] = {"kind": "one", "prompt": prompt.text, "found": len(found), "count": len(found) == 1}
    if not found:
        return {**item, "pred": None, "colour": False, "position": False, "shape": False, "size": False, "all": False}
    pred = _describe(found[0], shapes[0])
    ok = {a: pred[a] == getattr(want, a) for a in ("colour", "position", "shape", "size")}
    return {**item, "pred": pred, **ok, "all": ok["colour"] and ok["position"] and ok["shape"]}


def _score_two(prompt: ShapePrompt, found: list[FoundObject], shapes: list[str]) -> dict[str, Any]:
    item: dict[str, Any] = {"kind": "two", "prompt": prompt.text, "found": len(found), "count": len(found) == 2}
    if len(found) < 2:
        return {**item, "pred": None, "both_objects": False, "relation": False, "two_all": False}
    preds = [_describe(o, s) for o, s in zip(found[:2], shapes[:2])]

    def matches(order: tuple[int, int]) -> list[bool]:
        return [preds[k]["colour"] == w.colour and preds[k]["shape"] == w.shape for k, w in zip(order, prompt.objects)]

    def colours(order: tuple[int, int]) -> int:
        return sum(preds[k]["colour"] == w.colour for k, w in zip(order, prompt.objects))

    # which found object is the first one asked for: the order matching more of the asked objects (colour and
    # shape), then more of their colours (the two asked colours always differ: with wrong shapes the relation
    # is still read between the right colours); ties keep the larger object first
    order = max([(0, 1), (1, 0)], key=lambda o: (sum(matches(o)), colours(o)))
    a, b = found[order[0]], found[order[1]]
    rel = relation_of(a.centroid, b.centroid)
    both = all(matches(order))
    return {**item, "pred": [preds[order[0]], preds[order[1]]], "pred_relation": rel, "both_objects": both,
            "relation": rel == prompt.relation, "two_all": both and rel == prompt.relation}


@torch.no_grad()
def score_shapes(images: Tensor, prompts: Sequence[str | ShapePrompt | dict],
                 probe: ShapesProbe | None = None) -> dict[str, Any]:
    """How many images (B, 3, 64, 64) in [-1, 1] show what their prompts ask.

    prompts: captions, ShapePrompts or metadata attribute dicts, one per image. Returns accuracies:
    one-object prompts: colour, position, shape, size, all (colour, position and shape right), count
    (exactly one object found); two-object prompts: both_objects (each asked colour-shape pair present),
    relation (the pair in the asked relation), two_all (both); n_one, n_two; and `items`, one dict
    per image with its prediction and per-attribute correctness. NaN where a kind has no prompts.
    `probe`: a ShapesProbe (default: the shipped checkpoints/probes/shapes).
    """
    if images.ndim != 4 or tuple(images.shape[1:]) != (3, IMAGE_SIZE, IMAGE_SIZE):
        raise ProbeInputError(f"score_shapes takes images (B, 3, {IMAGE_SIZE}, {IMAGE_SIZE}) in [-1, 1], "
                              f"got {tuple(images.shape)}")
    if len(prompts) != len(images):
        raise ProbeInputError(f"{len(images)} images but {len(prompts)} prompts")
    probe = probe if probe is not None else load_probe(name="shapes")
    asked = [_as_prompt(p) for p in prompts]
    found = [find_objects(img, expect=len(p.objects)) for img, p in zip(images, asked)]
    # one classifier call over every object crop of the batch
    flat = probe.classify([o.crop for f in found for o in f[:2]])
    items, k = [], 0
    for p, f in zip(asked, found):
        shapes, k = flat[k: k + len(f[:2])], k + len(f[:2])
        items.append(_score_one(p, f, shapes) if p.kind == "one" else _score_two(p, f, shapes))
    ones, twos = [it for it in items if it["kind"] == "one"], [it for it in items if it["kind"] == "two"]
    out: dict[str, Any] = {a: fraction([it[a] for it in ones]) for a in ("colour", "position", "shape", "size", "all", "count")}
    out.update({a: fraction([it[a] for it in twos]) for a in ("both_objects", "relation", "two_all")})
    out.update(n_one=len(ones), n_two=len(twos), items=items)
    return out


# ---------------------------------------------------------------- training

def _degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A generated image (H, W, 3) uint8 blurred and noised like an imperfect sample, as (3, H, W) in [-1, 1]."""
    x = image.astype(np.float32) / 127.5 - 1.0
    x = ndimage.gaussian_filter(x, sigma=(rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0), 0))
    x = x + rng.normal(0.0, rng.uniform(0.0, 0.08), x.shape)
    return np.clip(x, -1.0, 1.0).transpose(2, 0, 1)


def _labelled_crops(items: list[ShapeItem], seed: int) -> tuple[Tensor, Tensor]:
    """Mask crops (N, 1, CROP, CROP) of every object of `items`, clean and degraded, and their shapes (N,)."""
    rng = np.random.default_rng(seed)
    crops, labels = [], []
    for item in items:
        for img in (item.image.astype(np.float32).transpose(2, 0, 1) / 127.5 - 1.0, _degrade(item.image, rng)):
            for o in find_objects(img, expect=len(item.prompt.objects)):
                # the asked object whose centre is nearest the found centroid
                k = int(np.argmin([math.dist(o.centroid, c) for c in item.centres]))
                crops.append(o.crop)
                labels.append(SHAPES.index(item.prompt.objects[k].shape))
    return torch.from_numpy(np.stack(crops))[:, None], torch.tensor(labels, dtype=torch.long)


def train_shapes_probe(out: Path | None, cfg: ShapesConfig | None = None, epochs: int = 12, seed: int = 0,
                       command: str = "") -> tuple[ShapesProbe, dict[str, Any]]:
    """Train the shape classifier on crops of cfg's train split, score the probe on its test split (the
    held-out combinations, real images), write it to `out` (unless None); (probe, test score)."""
    from mmflow.metrics.probes.train import fit_probe
    from mmflow.model_io import save_model

    cfg = cfg or ShapesConfig(n_one=3000, n_two=1500, seed=seed)
    start = time.perf_counter()
    x, y = _labelled_crops(make_shapes(cfg, "train"), seed)
    logger.info("%d crops in %.1f s", len(y), time.perf_counter() - start)
    torch.manual_seed(seed)
    probe = ShapesProbe(shapes_config(command=command))
    fit_probe(probe, {"crop": x}, {"shape": y}, epochs=epochs, batch_size=64, lr=3e-3, seed=seed, log_every=3)
    test = make_shapes(cfg, "test")
    images = torch.from_numpy(np.stack([it.image for it in test])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    score = score_shapes(images, [it.prompt for it in test], probe)
    probe.config.held_out_accuracy = {a: score[a] for a in ("shape", "colour", "position", "size")}
    probe.config.held_out_items = score["n_one"]
    probe.config.extra_metrics = {"all": score["all"], "two_both_objects": score["both_objects"],
                                  "two_relation": score["relation"], "two_all": score["two_all"],
                                  "two_items": float(score["n_two"])}
    if out is not None:
        save_model(probe, out)
    return probe.eval(), score
