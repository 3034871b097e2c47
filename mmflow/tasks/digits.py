"""Text-to-image on scikit-learn's handwritten digits, in pixel space: the MM-DiT's first image recipe.

Images: the 1797 8x8 digits upsampled to 16x16 (or 32x32), 1 channel in [-1, 1]. Text: captions such
as "a handwritten seven" or "the number 7" go through a stand-in text encoder (a word tokenizer and a
learned token embedding, mmflow.text.token_text) trained jointly with the MM-DiT; CFG dropout
swaps the text for the MM-DiT's learned null condition. Quality: for each digit, samples of
"a handwritten <digit>" at each guidance scale are classified by an SVC fitted on real digits
(mmflow.metrics.digit_classifier); accuracy = the fraction classified as the prompted digit.

    mmflow train recipes/digits_image.yaml
    mmflow sample runs/digits_image num_samples=16 --prompt "a handwritten seven" --prompt "the digit 3"
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from mmflow.config import ConfigError, check
from mmflow.data.digits import DIGIT_NAMES, DigitsDataset, all_captions, pixels_to_digits, prompt_for
from mmflow.metrics.digit_classifier import digit_classifier
from mmflow.models.mmdit import MMDiT, MMDiTConfig
from mmflow.sampling.generate import seeded_noise
from mmflow.sampling.layout import SampleLayout, WrongOutputRequest
from mmflow.text.token_text import TokenTextConfig, TokenTextEmbedder, WordTokenizer, build_vocabulary, split_words
from mmflow.tasks import register_task
from mmflow.tasks.flow_task import STABILITY_ROWS, VELOCITY, FlowMatchingTask, fixed_layout
from mmflow.train.random import BatchRandom
from mmflow.train.task import LossOutput, format_metric
from mmflow.utils.fs import write_json_atomic
from mmflow.utils.images import save_image_grid

TEXT = "text_embedder"  # the stand-in text encoder's model name (saved beside "velocity")
SAMPLE_CHUNK = 250  # rows per sampler call: bounds attention memory at 32x32 with CFG's doubled batch


def _probe_features(images: Tensor) -> Tensor:
    """The real-digit classifier's decision values (N, 10) for images (N, 1, S, S): a probe feature space."""
    if not torch.isfinite(images).all():  # sklearn refuses NaN; the stability numbers become NaN instead
        return torch.full((images.shape[0], 10), float("nan"))
    return torch.from_numpy(digit_classifier().model.decision_function(pixels_to_digits(images)))


@dataclass
class DigitsDataConfig:
    image_size: Literal[16, 32] = field(default=16, metadata={"help": "side the 8x8 digits are upsampled to"})
    eval_per_digit: int = field(default=50, metadata={"min": 1, "help": "validation: samples per digit and scale"})
    eval_guidance: tuple[float, ...] = field(default=(1.0, 3.0), metadata={"help": "validation: CFG scales w"})

    def validate(self) -> None:
        check(len(self.eval_guidance) > 0, "eval_guidance", "needs at least one guidance scale")


@dataclass
class DigitsModelConfig:
    hidden_size: int = field(default=128, metadata={"min": 1, "help": "MM-DiT token width"})
    depth: int = field(default=4, metadata={"min": 1})
    num_heads: int = field(default=4, metadata={"min": 1})
    mlp_ratio: float = field(default=4.0, metadata={"min": 0.0, "min_exclusive": True})
    patch_size: int = field(default=2, metadata={"min": 1, "help": "square patches: 16x16 / 2 = 64 tokens"})
    qk_norm: Literal["rms_norm"] | None = None
    text_dim: int = field(default=64, metadata={"min": 1, "help": "stand-in token embedding width"})
    max_text_length: int = field(default=8, metadata={"min": 1, "help": "text tokens S (captions are padded)"})
    attention_backend: Literal["auto", "sdpa", "xformers", "math"] = "auto"


@register_task
class DigitsImageTask(FlowMatchingTask):
    name = "digits_image"
    data_config_class = DigitsDataConfig
    model_config_class = DigitsModelConfig

    def __init__(self, recipe: Any) -> None:
        super().__init__(recipe)
        self.text_embedder: TokenTextEmbedder | None = None  # set by attach_models when a pipeline loads one

    # ------------------------------------------------------------------ models
    def mmdit_config(self) -> MMDiTConfig:
        m = self.recipe.model
        return MMDiTConfig(in_channels=1, patch_size=(m.patch_size, m.patch_size), hidden_size=m.hidden_size,
                           depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio, qk_norm=m.qk_norm,
                           context_dim=m.text_dim, pooled_dim=m.text_dim, pos_embed="rope", null_text="learned",
                           interval_embed=self.meanflow)

    def text_config(self) -> TokenTextConfig:
        # the vocabulary is a function of the caption templates only, so every run builds the same one
        m = self.recipe.model
        return TokenTextConfig(vocab=build_vocabulary(all_captions()), dim=m.text_dim, max_length=m.max_text_length)

    def build_models(self) -> dict[str, nn.Module]:
        velocity = MMDiT(self.mmdit_config(), attention_backend=self.recipe.model.attention_backend)
        return {VELOCITY: velocity, TEXT: TokenTextEmbedder(self.text_config())}

    def optimizer_groups(self, models: dict[str, nn.Module]) -> dict[str, list[str]]:
        return {"main": [VELOCITY, TEXT]}  # the embedder learns only through the flow loss

    def ema_models(self, models: dict[str, nn.Module]) -> list[str]:
        return [VELOCITY, TEXT]  # sampling pairs EMA velocity with EMA text: they must age together

    def attach_models(self, models: dict[str, nn.Module]) -> None:
        if TEXT not in models:
            raise ValueError(f"{self.name}: the pipeline must provide the {TEXT!r} model, got {sorted(models)}")
        self.text_embedder = models[TEXT]

    def pipeline_info(self) -> dict[str, Any]:
        return {"task": self.name, "model": VELOCITY, "extra_models": [TEXT],
                "text_vocabulary": list(self.text_config().vocab)}  # informative; the embedder's config.json rules

    @classmethod
    def validate_recipe(cls, recipe: Any, source: str | None) -> None:
        m, size = recipe.model, recipe.data.image_size
        if size % m.patch_size:
            raise ConfigError(f"{m.patch_size} does not divide data.image_size {size}", "model.patch_size", source)
        longest = max(len(split_words(c)) for c in all_captions())
        if m.max_text_length < longest:
            raise ConfigError(f"{m.max_text_length} is shorter than the longest caption ({longest} words)",
                              "model.max_text_length", source)
        try:
            cls(recipe).mmdit_config().validate()
        except ConfigError as e:  # the MM-DiT's keys that this schema shares keep their names
            key = f"model.{e.key}" if e.key in DigitsModelConfig.__dataclass_fields__ else "model"
            raise ConfigError(e.message, key, source) from e

    # ------------------------------------------------------------------ data and loss
    def build_dataset(self) -> DigitsDataset:
        tok = WordTokenizer(self.text_config().vocab, self.recipe.model.max_text_length)
        return DigitsDataset(self.recipe.data.image_size, tok.encode)

    def loss(self, models: dict[str, nn.Module], batch: Any, rng: BatchRandom, optimizer: str, step: int) -> LossOutput:
        # embed the captions here (the embedder trains with the MM-DiT), then the generic CFM loss
        cond = models[TEXT](batch["ids"], batch["mask"])
        return self.flow_loss(models[VELOCITY], batch["image"], cond, rng)

    def null_condition(self, model: nn.Module) -> dict[str, Tensor]:
        """The MM-DiT's learned null text, one row (batch 1), padded to max_text_length tokens."""
        weight = model.x_embedder.weight
        like = torch.zeros(1, self.recipe.model.max_text_length, model.config.context_dim,
                           device=weight.device, dtype=weight.dtype)
        return model.null_condition({"text": like})

    # ------------------------------------------------------------------ sampling and quality
    def sample_images(self, velocity: nn.Module, text_embedder: TokenTextEmbedder, prompts: Sequence[str],
                      device: torch.device, sample_cfg: Any, guidance: float | None = None,
                      check_finite: bool = True) -> Tensor:
        """One image per prompt (errors name unknown words), noise from sample_cfg.seed -> (P, 1, S, S) on CPU.

        The noise depends only on the seed and the row, so two guidance scales see the same x0.
        """
        size = self.recipe.data.image_size
        x0, g = seeded_noise((len(prompts), 1, size, size), sample_cfg.seed)
        cond = {k: v.to(device) for k, v in text_embedder.embed(prompts).items()}  # (P, ...)
        return self.sample(velocity, x0.to(device), cond, sample_cfg, guidance=guidance, generator=g, clamp=True,
                           batch_size=SAMPLE_CHUNK, check_finite=check_finite).x

    def evaluate(self, velocity: nn.Module, text_embedder: TokenTextEmbedder, device: torch.device,
                 sample_cfg: Any | None = None, out_dir: Path | None = None, per_digit: int | None = None,
                 guidances: Sequence[float] | None = None) -> dict[str, float]:
        """Classifier accuracy of "a handwritten <digit>" samples at each guidance scale.

        Returns accuracy_w<w> (fraction classified as the prompted digit, over all ten digits) per
        scale and classifier_accuracy_real (the classifier's own held-out accuracy on real digits). With
        out_dir: grid_w<w>.png (rows = digits 0..9, columns = samples) and accuracy_per_digit.json.
        """
        cfg = sample_cfg or self.recipe.sample
        n = per_digit or self.recipe.data.eval_per_digit
        labels = np.repeat(np.arange(10), n)  # (10 n,) digit of each row
        prompts = [prompt_for(int(d)) for d in labels]
        clf = digit_classifier()
        metrics: dict[str, float] = {"classifier_accuracy_real": clf.held_out_accuracy}
        per_digit_acc: dict[str, list[float]] = {}
        for w in guidances or self.recipe.data.eval_guidance:
            # validation reports non-finite samples as unknown metrics (the trainer writes them as null)
            images = self.sample_images(velocity, text_embedder, prompts, device, cfg, guidance=w,
                                        check_finite=False)  # (10 n, 1, S, S)
            hit = clf.predict(images) == labels  # (10 n,)
            metrics[f"accuracy_w{w:g}"] = float(hit.mean())
            rows = hit.reshape(10, n).mean(axis=1)  # (10,) per digit
            per_digit_acc[f"w{w:g}"] = [float(a) for a in rows]
            if out_dir is not None:
                save_image_grid(images.view(10, n, *images.shape[1:]), out_dir / f"grid_w{w:g}.png",
                                row_labels=[f"{d} {a:.0%}" for d, a in enumerate(rows)],
                                title=f"a handwritten <digit>, w={w:g}: {hit.mean():.1%} classified as asked")
        if out_dir is not None:
            write_json_atomic(out_dir / "accuracy_per_digit.json", {"digits": list(DIGIT_NAMES), **per_digit_acc})
        return metrics

    def validate(self, models: dict[str, nn.Module], out_dir: Path, step: int, device: torch.device) -> dict[str, float]:
        """Classifier accuracy (`evaluate`) and small-noise stability of 8 samples of "a handwritten 0".."7"
        at the recipe's sampler, in pixels and in the classifier's decision values."""
        metrics = self.evaluate(models[VELOCITY], models[TEXT], device, out_dir=out_dir)
        prompts = [prompt_for(d) for d in range(STABILITY_ROWS)]
        cond = {k: v.to(device) for k, v in models[TEXT].embed(prompts).items()}  # (8, ...)
        metrics.update(self.stability(models[VELOCITY], device, cond, rows=len(prompts), features=_probe_features))
        return metrics

    # ------------------------------------------------------------------ sampling (FlowPipeline)
    input_kind = "text"

    def sample_layout(self, size: Any = None, num_frames: int | None = None, seconds: float | None = None) -> SampleLayout:
        s = self.recipe.data.image_size
        return fixed_layout(SampleLayout((1, s, s), (1, s, s), "image"), self.name, size=size, num_frames=num_frames,
                            seconds=seconds)

    def default_inputs(self) -> list[Any]:
        return [prompt_for(d) for d in range(10)]

    def inputs_from_labels(self, labels: Sequence[int]) -> list[Any]:
        """Digit d -> "a handwritten <d>"."""
        bad = [d for d in labels if not 0 <= d <= 9]
        if bad:
            raise WrongOutputRequest(f"--label {bad[0]} is out of range: this model draws digits 0..9")
        return [prompt_for(d) for d in labels]

    def _embedder(self) -> TokenTextEmbedder:
        if self.text_embedder is None:
            raise ConfigError(f"{self.name}: no text embedder attached (load the model with FlowPipeline)")
        return self.text_embedder

    def prepare_inputs(self, rows: Sequence[Any], seeds: Sequence[int]) -> tuple[list[Any], list[str]]:
        """Unknown words are refused (UnknownWordError names them); over-long prompts are truncated, with a warning."""
        embedder = self._embedder()
        embedder.tokenizer.encode(sorted(set(rows)), truncate=True)  # fail on a bad prompt before any sampling
        return list(rows), embedder.truncation_warnings(sorted(set(rows)))

    def input_condition(self, velocity: nn.Module, rows: Sequence[Any], device: torch.device) -> dict[str, Tensor]:
        return {k: v.to(device) for k, v in self._embedder().embed(list(rows), truncate=True).items()}

    def negative_condition(self, velocity: nn.Module, prompt: str, device: torch.device) -> dict[str, Tensor]:
        return self.input_condition(velocity, [prompt], device)

    def sample_report(self, media: Tensor, inputs: Sequence[Any]) -> dict[str, Any]:
        """Per distinct prompt, "digit:count" of what the real-digit classifier sees in its samples, e.g. "7:15 1:1"."""
        predicted = digit_classifier().predict(media)
        out = {}
        for prompt in dict.fromkeys(inputs):
            counts = np.bincount(predicted[[i for i, p in enumerate(inputs) if p == prompt]], minlength=10)
            out[prompt] = " ".join(f"{d}:{c}" for d, c in sorted(enumerate(counts), key=lambda dc: -dc[1]) if c)
        return {"classified_as": out}

    def summary_lines(self, metrics: dict[str, float | None], run_dir: Path) -> list[str]:
        """The classifier check: accuracy per guidance scale and the classifier's own on real digits."""
        accuracies = {k: v for k, v in metrics.items() if "accuracy" in k}
        if not accuracies:
            return []
        return ["classifier check: " + ", ".join(f"{k} {format_metric(v, '.3f')}" for k, v in sorted(accuracies.items()))]
