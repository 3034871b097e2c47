"""What to measure: the `eval:` section of a recipe and the settings of `mmflow eval`.

Metrics: fd (Frechet distance in the feature space), precision_recall (Kynkaanniemi et al. 2019),
density_coverage (Naeem et al. 2020), clip_score (needs `clip`: a local CLIP folder for images and
videos, CLAP for audio), aesthetic (needs `clip`: CLIP ViT-L/14, and `aesthetic`: the head's weights).
A prompt check (`check`, e.g. shapes) scores each sample against its own prompt with an exact probe.
Features: a registered extractor (mmflow.metrics.features); "auto" picks a weight-free one per
modality (image: pixels, video: video_frames over pixels, audio: mel), whose numbers track drift
within one setup but are not comparable to published FID / FVD / FAD (those need `inception`, `i3d`
or a local audio encoder, with their weights files).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mmflow.config import check
from mmflow.metrics.probes.checks import PROMPT_CHECKS

__all__ = ["AUTO_FEATURES", "CHECKS", "EvalConfig", "METRICS"]

METRICS = ("fd", "precision_recall", "density_coverage", "clip_score", "aesthetic")
CHECKS = tuple(PROMPT_CHECKS)  # the registry's names: a new check is one line there
# the weight-free default per modality, and the options its factory takes
AUTO_FEATURES: dict[str, tuple[str, dict[str, Any]]] = {
    "image": ("pixels", {}), "video": ("video_frames", {"frames": "pixels"}), "audio": ("mel", {})}


@dataclass
class EvalConfig:
    metrics: list[str] = field(default_factory=list, metadata={
        "help": f"any of {', '.join(METRICS)}; empty: no evaluation (training)"})
    features: str = field(default="auto", metadata={
        "help": "feature extractor name (inception, clip, video_frames, i3d, mel, clap, probe:<name>, ...; "
                "video_frames:<image extractor>, e.g. video_frames:probe:shapes, picks the per-frame one); "
                "auto: a weight-free one per modality"})
    features_path: str | None = field(default=None, metadata={"help": "the extractor's local weights file / folder"})
    clip: str | None = field(default=None, metadata={
        "help": "local CLIP folder (images, videos) or CLAP folder (audio): clip_score, aesthetic"})
    aesthetic: str | None = field(default=None, metadata={"help": "aesthetic head weights (.pth / .safetensors)"})
    check: str | None = field(default=None, metadata={
        "help": f"a prompt check scoring each sample against its prompt with an exact probe: {', '.join(CHECKS)}"})
    real: str | None = field(default=None, metadata={
        "help": "folder of real media to compare with; null: the recipe's data.path (training)"})
    num_samples: int = field(default=256, metadata={"min": 1, "help": "generated samples per evaluation"})
    prompts: list[str] = field(default_factory=list, metadata={
        "help": "prompts sampled in turn (training); empty: the real folder's captions, in order"})
    batch_size: int = field(default=32, metadata={"min": 1, "help": "items per feature / sampling batch"})
    k_precision_recall: int = field(default=3, metadata={"min": 1, "help": "k of the k-NN manifolds (P/R)"})
    k_density_coverage: int = field(default=5, metadata={"min": 1, "help": "k of density / coverage"})
    stability_rows: int = field(default=4, metadata={
        "min": 0, "help": "small-noise validation: samples whose noise is perturbed (1e-3, 1e-2, 1e-1) at each "
                          "validation, logged as stability_amp_<s>; 0: off"})
    allow_rank_deficient: bool = field(default=False, metadata={
        "help": "compute fd with fewer samples than feature dims + 1 (biased; refused by default)"})

    def validate(self) -> None:
        unknown = [m for m in self.metrics if m not in METRICS]
        check(not unknown, "metrics", f"unknown metric(s) {unknown}; use any of {', '.join(METRICS)}")
        check(len(set(self.metrics)) == len(self.metrics), "metrics", f"{self.metrics} repeats a metric")
        check(self.check is None or self.check in CHECKS, "check", f"{self.check!r} is not one of {', '.join(CHECKS)}")
        check(self.clip is not None or not {"clip_score", "aesthetic"} & set(self.metrics), "clip",
              "clip_score and aesthetic need a local CLIP (or, for audio, CLAP) folder: set eval.clip / --clip")
        check(self.aesthetic is not None or "aesthetic" not in self.metrics, "aesthetic",
              "the aesthetic metric needs the head's weights file: set eval.aesthetic / --aesthetic")
