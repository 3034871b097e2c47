"""Scoring generated media against real media: features -> Frechet distance, precision/recall and
density/coverage; media + prompts -> CLIP score; images -> aesthetic score.

    cfg = EvalConfig(metrics=["fd", "precision_recall"], features="inception", features_path="pt_inception.pth")
    scorer = Evaluator(cfg, modality="image", cache_dir="~/.cache/mmflow/eval")
    report = scorer.score_sets(load_media_set("real/"), load_media_set("samples/"))
    report.metrics                      # {"fd": 12.3, "precision": 0.71, "recall": 0.55, ...}
    scorer.score_media(media, prompts, real_set)   # the same on generated tensors (training, mmflow eval MODEL)

The real side's features depend only on the real folder's contents and the extractor, so they are
cached (safetensors under cache_dir, keyed by both fingerprints) and a second evaluation against the
same data reads them back. Every metric refuses what it cannot measure with a UserError naming it:
too few samples for a full-rank covariance or for k nearest neighbours, real and fake of different
modalities, an extractor of another modality, CLIP score without prompts.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from mmflow.evaluation.config import AUTO_FEATURES, EvalConfig
from mmflow.evaluation.media_sets import MediaSet, MediaSetError
from mmflow.metrics.clip_score import clip_scores
from mmflow.metrics.errors import FeatureMismatch, NotEnoughSamples
from mmflow.metrics.features import FeatureExtractor, get_features
from mmflow.metrics.frechet import FeatureStats, frechet_distance
from mmflow.metrics.manifold import manifold_report
from mmflow.utils.fs import atomic_folder

__all__ = ["DISTRIBUTION_METRICS", "EvalReport", "Evaluator", "check_real"]

logger = logging.getLogger("mmflow.evaluation")


@dataclass
class EvalReport:
    """metrics by name (fd, precision, recall, density, coverage, clip_score, aesthetic); counts of real and
    fake items used; skipped: (file, reason) of media that did not decode; features: the extractor's describe();
    items: the prompt check's reading of each generated item, in order (empty without a check)."""

    metrics: dict[str, float]
    num_real: int
    num_fake: int
    features: dict[str, Any]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = {"metrics": self.metrics, "num_real": self.num_real, "num_fake": self.num_fake,
               "features": self.features, "skipped": [list(s) for s in self.skipped]}
        return {**out, "items": self.items} if self.items else out

    def table(self) -> str:
        """The metrics as an aligned two-column text table."""
        width = max(len(k) for k in self.metrics) if self.metrics else 0
        lines = [f"{k:<{width}}  {v:.4f}" for k, v in self.metrics.items()]
        return "\n".join([f"{self.num_fake} generated vs {self.num_real} real, features {self.features.get('name')}",
                          *lines])


DISTRIBUTION_METRICS = ("fd", "precision_recall", "density_coverage")  # compare features with a real set's


def check_real(cfg: EvalConfig, real: object | None) -> None:
    """Refuse distribution metrics without a real set (before any sampling: mmflow eval MODEL checks first)."""
    wanted = [m for m in cfg.metrics if m in DISTRIBUTION_METRICS]
    if wanted and real is None:
        raise MediaSetError(f"{', '.join(wanted)} compare with real media: give a real folder (--real), or choose "
                            "--metrics without them (e.g. only --check)")


class Evaluator:
    """The extractors an EvalConfig names, built once for `modality`, on `device`."""

    def __init__(self, cfg: EvalConfig, modality: str, cache_dir: str | Path | None = None,
                 device: str | torch.device = "cpu", progress: bool = False) -> None:
        self.cfg, self.modality, self.device, self.progress = cfg, modality, torch.device(device), progress
        self.cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()
        self.media_rate: int | None = None  # the sample rate of generated audio handed to score_media
        name, options = (cfg.features, {}) if cfg.features != "auto" else AUTO_FEATURES[modality]
        needs_features = set(DISTRIBUTION_METRICS) & set(cfg.metrics)
        self.features = get_features(name, cfg.features_path, self.device, **options) if needs_features else None
        if self.features is not None and self.features.modality != modality:
            raise FeatureMismatch(f"feature extractor {name!r} reads {self.features.modality} media, but the media "
                                  f"to evaluate are {modality}; choose an extractor for {modality}")
        self.clip = None
        if {"clip_score", "aesthetic"} & set(cfg.metrics):
            self.clip = get_features("clap" if modality == "audio" else "clip", cfg.clip, self.device)
        self.aesthetic = None
        if "aesthetic" in cfg.metrics:
            if modality != "image":
                raise FeatureMismatch(f"the aesthetic score rates images, not {modality}")
            from mmflow.metrics.features.aesthetic import load_aesthetic_scorer

            self.aesthetic = load_aesthetic_scorer(cfg.aesthetic).to(self.device)

    def to(self, device: str | torch.device) -> Evaluator:
        """Move the extractors to `device` (training evaluates on the trainer's device)."""
        self.device = torch.device(device)
        for module in (self.features, self.clip, self.aesthetic):
            if module is not None:
                module.to(self.device)
        return self

    def check_counts(self, num_real: int, num_fake: int) -> None:
        """Refuse (NotEnoughSamples) set sizes the configured metrics cannot use, before any sampling."""
        cfg, need = self.cfg, []
        if "fd" in cfg.metrics and self.features is not None and not cfg.allow_rank_deficient:
            need.append(("fd", self.features.dim + 1, f"a full-rank {self.features.dim}-d covariance"))
        if "precision_recall" in cfg.metrics:
            need.append(("precision_recall", cfg.k_precision_recall + 1, f"k = {cfg.k_precision_recall} neighbours"))
        if "density_coverage" in cfg.metrics:
            need.append(("density_coverage", cfg.k_density_coverage + 1, f"k = {cfg.k_density_coverage} neighbours"))
        for metric, n, why in need:
            for side, have in (("real", num_real), ("generated", num_fake)):
                if have < n:
                    raise NotEnoughSamples(f"{metric} needs at least {n} {side} items ({why}); there are {have}")

    # ------------------------------------------------------------------ features
    def _extract(self, extractor: FeatureExtractor, batches: Iterable[Tensor], total: int, what: str) -> Tensor:
        """Features (N, D) float32 on CPU of every batch, in order, with a progress bar over items."""
        out = []
        with torch.no_grad(), tqdm(total=total, unit="item", desc=what, disable=not self.progress) as bar:
            for media in batches:
                out.append(extractor(media.to(self.device)).float().cpu())
                bar.update(len(media))
        return torch.cat(out) if out else torch.zeros(0, extractor.dim)

    def _set_batches(self, media_set: MediaSet, extractor: FeatureExtractor) -> Iterable[Tensor]:
        channels = 1 if extractor.modality == "audio" else None  # audio extractors take mono
        return (x for x, _ in media_set.batches(self.cfg.batch_size, extractor.sample_rate, channels))

    def _tensor_batches(self, media: Tensor, extractor: FeatureExtractor) -> Iterable[Tensor]:
        """Generated media in batches, resampled for an audio extractor (generated audio is at `media_rate`)."""
        for i in range(0, len(media), self.cfg.batch_size):
            x = media[i: i + self.cfg.batch_size]
            if extractor.sample_rate and self.media_rate and extractor.sample_rate != self.media_rate:
                from mmflow.data.audio_reader import prepare_audio

                x = prepare_audio(x, self.media_rate, extractor.sample_rate, 1)
            elif extractor.modality == "audio" and x.shape[1] > 1:
                x = x.mean(1, keepdim=True)
            yield x

    def real_features(self, real: MediaSet) -> Tensor:
        """The real set's features (N, D), read from the cache when the folder and extractor are unchanged."""
        assert self.features is not None
        key = hashlib.sha256(json.dumps([real.fingerprint(), self.features.describe()], sort_keys=True,
                                        default=str).encode()).hexdigest()[:32]
        cached = None if self.cache_dir is None else self.cache_dir / key
        if cached is not None and (cached / "features.safetensors").is_file():
            logger.info("real features of %s from the cache %s", real.root, cached)
            return load_file(str(cached / "features.safetensors"))["features"]
        feats = self._extract(self.features, self._set_batches(real, self.features), len(real), "real features")
        if cached is not None:
            with atomic_folder(cached) as out:
                save_file({"features": feats.contiguous()}, str(out / "features.safetensors"))
                (out / "about.json").write_text(json.dumps({"real": str(real.root), "count": len(feats),
                                                            "features": self.features.describe()}, default=str))
        return feats

    # ------------------------------------------------------------------ scores
    def _distribution(self, real: Tensor, fake: Tensor) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if "fd" in self.cfg.metrics:
            metrics["fd"] = frechet_distance(FeatureStats.from_features(real), FeatureStats.from_features(fake),
                                             allow_rank_deficient=self.cfg.allow_rank_deficient,
                                             names=("real", "generated"))
        if {"precision_recall", "density_coverage"} & set(self.cfg.metrics):
            report = manifold_report(real, fake, k_pr=self.cfg.k_precision_recall, k_dc=self.cfg.k_density_coverage)
            if "precision_recall" in self.cfg.metrics:
                metrics.update(precision=report.precision, recall=report.recall)
            if "density_coverage" in self.cfg.metrics:
                metrics.update(density=report.density, coverage=report.coverage)
        return metrics

    def _alignment(self, batches: Iterable[Tensor], total: int, prompts: Sequence[str], media: Tensor | None
                   ) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """(clip_score / aesthetic / the prompt check's accuracies, the check's per-item readings)."""
        metrics: dict[str, float] = {}
        items: list[dict[str, Any]] = []
        if self.cfg.check is not None and media is not None:
            from mmflow.metrics.probes.checks import check_report

            checked = check_report(self.cfg.check, media, prompts)
            metrics.update({f"{self.cfg.check}_{k}": v for k, v in checked.accuracies.items()})
            items = checked.items
        if "clip_score" in self.cfg.metrics:
            if len(prompts) != total or not any(prompts):
                raise MediaSetError(f"clip_score needs a prompt per generated item: {sum(map(bool, prompts))} of "
                                    f"{total} items have one (samples.json, metadata.jsonl or --prompts)")
            assert self.clip is not None
            feats = self._extract(self.clip, batches, total, "clip features")
            text = torch.cat([self.clip.encode_text(prompts[i: i + 256]).float().cpu()
                              for i in range(0, len(prompts), 256)])
            metrics["clip_score"] = float(clip_scores(feats, text).mean())
        if "aesthetic" in self.cfg.metrics and media is not None:
            from mmflow.metrics.features.aesthetic import aesthetic_score

            metrics["aesthetic"] = float(aesthetic_score(media, self.clip, self.aesthetic, self.cfg.batch_size).mean())
        return metrics, items

    def score_sets(self, real: MediaSet | None, fake: MediaSet) -> EvalReport:
        """Score the generated folder `fake` against `real` (None: only clip_score / aesthetic)."""
        if real is not None and real.modality != fake.modality:
            raise MediaSetError(f"the real folder {real.root} holds {real.modality} but the generated folder "
                                f"{fake.root} holds {fake.modality}: compare media of one modality")
        metrics: dict[str, float] = {}
        num_real = 0
        items: list[dict[str, Any]] = []
        if self.features is not None:
            check_real(self.cfg, real)
            real_feats = self.real_features(real)
            fake_feats = self._extract(self.features, self._set_batches(fake, self.features), len(fake), "features")
            metrics.update(self._distribution(real_feats, fake_feats))
            num_real = len(real_feats)
        if self.clip is not None or self.cfg.check is not None:
            # one decoding pass, at the CLIP/CLAP extractor's rate for audio; held in memory (evaluation sizes)
            rate = self.clip.sample_rate if self.clip is not None else None
            channels = 1 if self.clip is not None and self.clip.modality == "audio" else None
            pairs = list(fake.batches(self.cfg.batch_size, rate, channels))
            kept = [i for _, idx in pairs for i in idx]
            media = torch.cat([x for x, _ in pairs]) if pairs and (self.aesthetic is not None or self.cfg.check is not None) else None
            batches = (x for x, _ in pairs) if self.clip is not None else iter(())
            aligned, items = self._alignment(batches, len(kept), [fake.captions[i] for i in kept], media)
            metrics.update(aligned)
            items = [{"file": fake.files[i].relative_to(fake.root).as_posix(), **it} for i, it in zip(kept, items)]
        skipped = (real.skipped if real else []) + fake.skipped
        return EvalReport(metrics, num_real, len(fake) - len(fake.skipped), self._describe(), skipped, items)

    def score_media(self, media: Tensor, prompts: Sequence[str], real: MediaSet | None,
                    sample_rate: int | None = None) -> EvalReport:
        """Score generated media (N, C, ...) in [-1, 1] (audio at `sample_rate`) with their N prompts."""
        self.media_rate = sample_rate
        metrics: dict[str, float] = {}
        num_real = 0
        items: list[dict[str, Any]] = []
        if self.features is not None:
            check_real(self.cfg, real)
            real_feats = self.real_features(real)
            fake_feats = self._extract(self.features, self._tensor_batches(media, self.features), len(media), "features")
            metrics.update(self._distribution(real_feats, fake_feats))
            num_real = len(real_feats)
        if self.clip is not None or self.cfg.check is not None:
            batches = self._tensor_batches(media, self.clip) if self.clip is not None else iter(())
            aligned, items = self._alignment(batches, len(media), list(prompts), media)
            metrics.update(aligned)
        return EvalReport(metrics, num_real, len(media), self._describe(), list(real.skipped) if real else [], items)

    def _describe(self) -> dict[str, Any]:
        out = dict(self.features.describe()) if self.features is not None else {"name": None}
        if self.clip is not None:
            out["clip"] = self.clip.describe()
        return out
