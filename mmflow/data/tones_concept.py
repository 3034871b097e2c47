"""An audio concept set: teach a trained tones model (mmflow.data.tones) a timbre it has never heard.

The train split is `n_concept` clips of the new timbre (an EXTRA_TIMBRES name: the organ), the (pattern, mode)
variants taken in turn over (key, tempo) combinations, plus a prior-preservation share of the original set
(DreamBooth's idea): the first `n_prior` clips of the default train split as tones_t2m trains on it (half of them
cut short, as data/tones_timed/train), which the shipped model was trained on. The test split is `n_test`
(variant, key, tempo) combinations of the new timbre the train split does not show, spread over the rest, so it
measures the timbre word carried to other melodies, not memory; the tones probe's classifier knows the timbre.

    cfg = TonesConceptConfig(timbre="organ", n_concept=40)
    items = make_tones_concept(cfg, "train")            # 40 organ + 200 prior ToneItems
    prompts = tones_concept_prompts(cfg, "test")        # 48 organ prompts never shown

    python -m mmflow.data.tones_concept --out data/tones/concept_organ --split train
    python -m mmflow.data.tones_concept --out data/tones/concept_organ_test --split test

Deterministic in the config: concept clip i is drawn from a generator seeded by (seed, stream, split, i) only.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmflow.config import check
from mmflow.data.shapes_concept import taken_in_turn
from mmflow.data.tones import (EXTRA_TIMBRES, KEYS, TEMPI, VARIANTS, ToneItem, TonePrompt, TonesConfig, make_tones,
                               synthesize, write_tone_items)

__all__ = ["TonesConceptConfig", "make_tones_concept", "timbre_clips", "tones_concept_prompts",
           "write_tones_concept_folder"]

_SPLITS = {"train": 0, "test": 1}
_STREAM = 7  # the tones set's generators are (seed, split, i): a 4-entry seed is never one of them
_PROBE_STREAM = 8  # the probe's own clips of the extra timbres (timbre_clips)


@dataclass
class TonesConceptConfig:
    """The new timbre, how many of its clips to teach with and test on, and how much of the old set to keep."""

    timbre: str = "organ"  # an EXTRA_TIMBRES name: a timbre the default splits never draw
    n_concept: int = 40  # train clips of the new timbre (of 5 variants x 12 keys x 4 tempi = 240)
    n_test: int = 48  # held-out prompts of the new timbre, spread over the combinations train does not show
    n_prior: int = 200  # clips of the original train split (prior preservation)
    prior_short_fraction: float = 0.5  # as the train split tones_t2m trains on (data/tones_timed/train)
    seed: int = 0

    def validate(self) -> None:
        check(self.timbre in EXTRA_TIMBRES, "timbre",
              f"{self.timbre!r} is not a new timbre; the concept timbres are {list(EXTRA_TIMBRES)}")
        total = len(VARIANTS) * len(KEYS) * len(TEMPI)
        check(0 < self.n_concept < total, "n_concept", f"must be in 1..{total - 1}: the test split is the rest")
        check(0 < self.n_test <= total - self.n_concept, "n_test",
              f"must be in 1..{total - self.n_concept}: the combinations the {self.n_concept} train clips leave")
        check(self.n_prior >= 0, "n_prior", f"must be >= 0, got {self.n_prior}")
        check(0.0 <= self.prior_short_fraction <= 1.0, "prior_short_fraction",
              f"must lie in [0, 1], got {self.prior_short_fraction}")


def tones_concept_prompts(cfg: TonesConceptConfig, split: str = "train") -> list[TonePrompt]:
    """The new timbre's prompts: train, cfg.n_concept (variant, key, tempo) combinations, the variants taken in
    turn (each variant's (key, tempo) pairs in a seeded order); test, cfg.n_test of the rest (in VARIANTS, KEYS,
    TEMPI order), evenly spread."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {list(_SPLITS)}, got {split!r}")
    cfg.validate()
    per_variant = [[(v, k, t) for k, t in itertools.product(KEYS, TEMPI)] for v in VARIANTS]
    taken = taken_in_turn(per_variant, np.random.default_rng([cfg.seed, _STREAM]), cfg.n_concept)
    if split == "test":
        chosen = set(taken)
        rest = [c for c in itertools.product(VARIANTS, KEYS, TEMPI) if c not in chosen]
        taken = [rest[(2 * i + 1) * len(rest) // (2 * cfg.n_test)] for i in range(cfg.n_test)]
    return [TonePrompt(cfg.timbre, pattern, key, mode, tempo) for (pattern, mode), key, tempo in taken]


def make_tones_concept(cfg: TonesConceptConfig, split: str = "train") -> list[ToneItem]:
    """The split's clips (4 s each): one per prompt of tones_concept_prompts, then (train only) the first
    cfg.n_prior clips of the default train split (TonesConfig(n_prior, seed, short_fraction))."""
    prompts = tones_concept_prompts(cfg, split)
    items = [synthesize(p, np.random.default_rng([cfg.seed, _STREAM, _SPLITS[split], i]))
             for i, p in enumerate(prompts)]
    if split == "train" and cfg.n_prior:
        prior = TonesConfig(n_train=cfg.n_prior, seed=cfg.seed, short_fraction=cfg.prior_short_fraction)
        items += make_tones(prior, "train")
    return items


def timbre_clips(timbre: str, n: int, seed: int = 0) -> list[ToneItem]:
    """n clips of an extra timbre at random (variant, key, tempo), from a stream of their own (the tones
    probe learns the extra timbres from these; never the concept set's clips)."""
    check(timbre in EXTRA_TIMBRES, "timbre", f"{timbre!r} is not one of {list(EXTRA_TIMBRES)}")
    items = []
    for i in range(n):
        rng = np.random.default_rng([seed, _PROBE_STREAM, EXTRA_TIMBRES.index(timbre), i])
        pattern, mode = VARIANTS[int(rng.integers(len(VARIANTS)))]
        items.append(synthesize(TonePrompt(timbre, pattern, KEYS[int(rng.integers(len(KEYS)))], mode,
                                           TEMPI[int(rng.integers(len(TEMPI)))]), rng))
    return items


def write_tones_concept_folder(folder: str | Path, cfg: TonesConceptConfig, split: str = "train") -> Path:
    """Write the split into `folder` as an audio folder (WAVs + metadata.jsonl, as the tones set)."""
    return write_tone_items(folder, make_tones_concept(cfg, split))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmflow.data.tones_concept", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the folder to write (replaced if it exists)")
    p.add_argument("--split", choices=list(_SPLITS), default="train")
    p.add_argument("--timbre", default=TonesConceptConfig.timbre, help=f"the new timbre: {', '.join(EXTRA_TIMBRES)}")
    p.add_argument("--n-concept", type=int, default=TonesConceptConfig.n_concept, help="train clips of the timbre")
    p.add_argument("--n-test", type=int, default=TonesConceptConfig.n_test, help="held-out prompts of the timbre")
    p.add_argument("--n-prior", type=int, default=TonesConceptConfig.n_prior, help="clips of the original train split")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cfg = TonesConceptConfig(args.timbre, args.n_concept, args.n_test, args.n_prior, seed=args.seed)
    write_tones_concept_folder(args.out, cfg, args.split)
    n = sum(1 for _ in (args.out / "metadata.jsonl").open())
    print(f"wrote {n} {args.split} clips of the {cfg.timbre} concept to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
