"""Train a probe on a labelled train folder, measure it on a held-out 20%, and write its model folder.

    python -m mmflow.metrics.probes.train emoji_video --data ../shared/data/emoji_video64 --out checkpoints/probes/emoji_video
    python -m mmflow.metrics.probes.train music --data ../shared/data/music16k --out checkpoints/probes/music

The folder's items are split by sha256 of their file_name (mmflow.metrics.probes.data.is_held_out),
so the held-out items are the same on every machine and never trained on. The probe's fixed front
end (`Probe.prepare`) runs once per item; training (AdamW, cosine learning rate, cross-entropy
summed over the attributes, label-aware augmentations for clips) runs on its output, on CPU in
minutes. The folder is written atomically, with the held-out accuracies and this command in its
config.json.
"""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from mmflow.metrics.probes.base import Probe, ProbeConfig
from mmflow.metrics.probes.data import DEFAULT_CACHE, LabelledSet, load_labelled_folder
from mmflow.model_io import build_model, save_model

__all__ = ["PROBE_SETS", "ProbeSet", "TrainReport", "evaluate", "fit_probe", "main", "prepare_all", "probe_set", "train"]

logger = logging.getLogger("mmflow.probes")

Prepared = dict[str, Tensor]
Augment = Callable[[Prepared, dict[str, Tensor], torch.Generator], tuple[Prepared, dict[str, Tensor]]]


@dataclass
class ProbeSet:
    """How one dataset becomes a probe: its model type, config, readers of files and labels, augmentation."""

    model_type: str
    config: Callable[..., ProbeConfig]
    read: Callable[[Path], Tensor]  # file -> one item (*media_shape)
    labels: dict[str, Callable[[dict], int]]  # attribute -> metadata line -> class index
    augment: Augment | None = None
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3


def _augment_clips(prepared: Prepared, labels: dict[str, Tensor], g: torch.Generator) -> tuple[Prepared, dict[str, Tensor]]:
    """Mirror left-right and/or play backwards half the clips, mapping their motion labels to match."""
    from mmflow.metrics.probes.emoji_video import flip_motion, reverse_motion

    clip, motion = prepared["clip"].clone(), labels["motion"].clone()  # (B, 3, T, h, w), (B,)
    flip = torch.rand(len(clip), generator=g) < 0.5
    rev = torch.rand(len(clip), generator=g) < 0.5
    clip[flip] = clip[flip].flip(-1)
    motion[flip] = flip_motion[motion[flip]]
    clip[rev] = clip[rev].flip(2)
    motion[rev] = reverse_motion[motion[rev]]
    return {"clip": clip}, {**labels, "motion": motion}


def probe_set(name: str) -> ProbeSet:
    """How the probe `name` (one of PROBE_SETS) is trained: its model, reader, labels, augmentation."""
    from mmflow.metrics.probes import emoji_video as ev
    from mmflow.metrics.probes import music as mu

    sets = {
        "emoji_video": ProbeSet("probe_emoji_video", ev.emoji_video_config, ev.read_clip,
                                {"motion": lambda r: ev.MOTIONS.index(r["motion"]),
                                 "background": lambda r: ev.BACKGROUNDS.index(r["background"])},
                                augment=_augment_clips, epochs=80),
        "music": ProbeSet("probe_music", mu.music_config, mu.read_wave,
                          {"key": lambda r: mu.pitch_class(r["key"]), "mode": lambda r: mu.MODES.index(r["mode"]),
                           "instrument": lambda r: mu.INSTRUMENTS.index(r["instrument"])},
                          epochs=80, lr=3e-3),
    }
    return sets[name]


PROBE_SETS = ("emoji_video", "music")


@torch.no_grad()
def prepare_all(probe: Probe, media: Tensor, batch_size: int = 64) -> Prepared:
    """The probe's fixed front end over all items: {name: (N, ...)}."""
    parts = [probe.prepare(media[i: i + batch_size]) for i in range(0, len(media), batch_size)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


@torch.no_grad()
def evaluate(probe: Probe, prepared: Prepared, labels: dict[str, Tensor], batch_size: int = 64) -> dict[str, float]:
    """Held-out accuracy per attribute on prepared inputs."""
    probe.eval()
    n = len(next(iter(labels.values())))
    hits = {a: 0 for a in labels}
    for i in range(0, n, batch_size):
        logits = probe.prepared_logits({k: v[i: i + batch_size] for k, v in prepared.items()})
        for a, y in labels.items():
            hits[a] += int((logits[a].argmax(dim=1) == y[i: i + batch_size]).sum())
    return {a: hits[a] / max(n, 1) for a in labels}


def fit_probe(probe: Probe, prepared: Prepared, labels: dict[str, Tensor], *, epochs: int, batch_size: int = 32,
              lr: float = 2e-3, seed: int = 0, augment: Augment | None = None, log_every: int = 0) -> list[float]:
    """Train `probe` in place on prepared inputs {name: (N, ...)} and labels {attr: (N,)}; mean loss per epoch."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    n = len(next(iter(labels.values())))
    steps = epochs * math.ceil(n / batch_size)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    losses = []
    for epoch in range(epochs):
        probe.train()
        order = torch.randperm(n, generator=g)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = order[i: i + batch_size]
            x, y = {k: v[idx] for k, v in prepared.items()}, {a: v[idx] for a, v in labels.items()}
            if augment is not None:
                x, y = augment(x, y, g)
            logits = probe.prepared_logits(x)
            loss = sum(F.cross_entropy(logits[a], y[a]) for a in y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / n)
        if log_every and (epoch + 1) % log_every == 0:
            logger.info("epoch %d/%d: loss %.4f", epoch + 1, epochs, losses[-1])
    probe.eval()
    return losses


@dataclass
class TrainReport:
    held_out_accuracy: dict[str, float]
    fit_items: int
    held_out_items: int
    seconds: float


def train(name: str, data: Path, out: Path, epochs: int | None = None, seed: int = 0, cache: Path | None = DEFAULT_CACHE,
          command: str = "", extra: Callable[[LabelledSet], dict[str, float]] | None = None) -> TrainReport:
    """Train the probe `name` on `data`'s fit split, write it to `out`, return its held-out numbers."""
    spec = probe_set(name)
    start = time.perf_counter()
    items = load_labelled_folder(data, spec.labels, spec.read, tag=name, cache=cache)
    fit_set, held = items.split()
    torch.manual_seed(seed)
    probe = build_model(spec.model_type, spec.config(command=command))
    assert isinstance(probe, Probe)
    fit_prep, held_prep = prepare_all(probe, fit_set.media), prepare_all(probe, held.media)
    fit_probe(probe, fit_prep, fit_set.labels, epochs=epochs or spec.epochs, batch_size=spec.batch_size,
              lr=spec.lr, seed=seed, augment=spec.augment, log_every=5)
    acc = evaluate(probe, held_prep, held.labels)
    probe.config.held_out_accuracy = acc
    probe.config.held_out_items = len(held.names)
    if extra is not None:
        probe.config.extra_metrics = extra(held)
    save_model(probe, out)
    return TrainReport(acc, len(fit_set.names), len(held.names), time.perf_counter() - start)


def _music_tempo(held: LabelledSet) -> dict[str, float]:
    from mmflow.metrics.probes.tempo import estimate_tempo, tempo_errors

    est = [estimate_tempo(w, 16000) for w in held.media]
    e = tempo_errors(est, [r["bpm"] for r in held.rows])
    return {"tempo_mean_abs_error_bpm": e.mean_abs_error, "tempo_octave_errors": e.octave_errors,
            "tempo_mean_abs_error_no_octave_bpm": e.mean_abs_error_no_octave, "tempo_within_2_bpm": e.within_2_bpm}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmflow.metrics.probes.train", description=__doc__.split("\n")[0])
    p.add_argument("name", choices=PROBE_SETS)
    p.add_argument("--data", type=Path, required=True, help="the labelled train folder (metadata.jsonl + media)")
    p.add_argument("--out", type=Path, required=True, help="the probe folder to write (checkpoints/probes/<name>)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help=f"decode every file again (cache: {DEFAULT_CACHE})")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    command = shlex.join(["python", "-m", "mmflow.metrics.probes.train", *(argv if argv is not None else sys.argv[1:])])
    import mmflow.metrics.probes  # noqa: F401  (registers the probe model types)

    report = train(args.name, args.data, args.out, args.epochs, args.seed, None if args.no_cache else DEFAULT_CACHE,
                   command=command, extra=_music_tempo if args.name == "music" else None)
    acc = ", ".join(f"{a} {v:.3f}" for a, v in report.held_out_accuracy.items())
    print(f"{args.name}: held-out accuracy ({report.held_out_items} items; fit on {report.fit_items}): {acc}; "
          f"{report.seconds:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
