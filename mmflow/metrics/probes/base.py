"""What a probe is: a small classifier of our own data's attributes, shipped as a model folder.

No pretrained network can be fetched here, so each dataset the recipes use gets a probe trained on
its train split: one classification head per labelled attribute (emoji clips: motion, background;
music: key, mode, instrument). A probe answers "does the sample show what the prompt asked"
(`accuracy`) and gives the vectors a Frechet distance is computed in (`features`, its penultimate
hidden layer). Its config.json records the class names, the input it takes, its own held-out
accuracy and the command that retrains it:

    probe = load_probe("checkpoints/probes/emoji_video")
    probe.predict(clips)                        # {"motion": (B,) long, "background": (B,) long}
    probe.accuracy(clips, {"motion": ["move_left", ...], "background": labels})   # {"motion": 0.93, ...}
    probe.features(clips)                       # (B, D) float32
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from mmflow.errors import MissingInput, UserError
from mmflow.model_io import load_model

__all__ = ["SHIPPED_PROBES", "AttributeClassifier", "Labels", "Probe", "ProbeConfig", "ProbeInputError", "encode_labels", "fraction",
           "load_probe", "shipped_probe_path"]

# The probe folders the repository ships (checkpoints/probes/<name>/), next to the package in a checkout.
SHIPPED_PROBES = Path(__file__).resolve().parents[3] / "checkpoints" / "probes"

Labels = Tensor | Sequence[int] | Sequence[str]  # class indices (B,) or class names


class ProbeInputError(UserError, ValueError):
    """Media of a shape (or labels of a kind) the probe was not built for; names the expected ones."""


@dataclass
class ProbeConfig:
    """Everything a probe folder needs to be used without the code that trained it."""

    name: str  # "emoji_video", "music": what `probe:<name>` features are called
    modality: str  # "video" | "audio" (a name in mmflow.modalities)
    media_shape: list[int]  # one item's shape, e.g. [3, 16, 64, 64] or [1, 64000]
    attributes: dict[str, list[str]]  # attribute -> class names (a label is an index into the list)
    sample_rate: int | None = None  # audio: the rate the input must have
    width: int = 32  # channels of the first hidden layer (architecture size)
    feature_dim: int = 128  # size of the penultimate hidden layer = features(media).shape[1]
    held_out_accuracy: dict[str, float] = field(default_factory=dict)  # attribute -> accuracy on the held-out split
    held_out_items: int = 0  # how many items that accuracy is over
    extra_metrics: dict[str, float] = field(default_factory=dict)  # other held-out numbers (tempo error...)
    command: str = ""  # the command that retrains this probe

    def validate(self) -> None:
        if not self.attributes or any(len(v) < 2 for v in self.attributes.values()):
            raise ValueError("attributes: every attribute needs at least two class names")


def encode_labels(config: ProbeConfig, attr: str, labels: Labels) -> Tensor:
    """Labels of `attr` (indices or class names) -> (B,) long; ProbeInputError names unknown ones."""
    if attr not in config.attributes:
        raise ProbeInputError(f"probe {config.name!r} has no attribute {attr!r}; it has {list(config.attributes)}")
    names = config.attributes[attr]
    if isinstance(labels, Tensor):
        out = labels.long().reshape(-1)
    elif len(labels) and isinstance(labels[0], str):
        unknown = sorted({s for s in labels if s not in names})
        if unknown:
            raise ProbeInputError(f"probe {config.name!r}: unknown {attr} labels {unknown}; known: {names}")
        out = torch.tensor([names.index(s) for s in labels], dtype=torch.long)
    else:
        out = torch.as_tensor(list(labels), dtype=torch.long)
    if len(out) and (int(out.min()) < 0 or int(out.max()) >= len(names)):
        raise ProbeInputError(f"probe {config.name!r}: {attr} labels must lie in 0..{len(names) - 1}")
    return out


class AttributeClassifier:
    """What every probe answers (the trained ones below, and the digits SVC): `predict` and, from it,
    `accuracy`; `config` names the attributes and their classes."""

    config: ProbeConfig

    @property
    def attributes(self) -> dict[str, list[str]]:
        return self.config.attributes

    def predict(self, media: Tensor) -> dict[str, Tensor]:
        """(B, ...) media -> {attr: (B,) long class index}."""
        raise NotImplementedError

    def accuracy(self, media: Tensor, labels: dict[str, Labels]) -> dict[str, float]:
        """Fraction of items whose predicted class is their label, for each attribute in `labels`."""
        pred = self.predict(media)
        out = {}
        for attr, lab in labels.items():
            y = encode_labels(self.config, attr, lab)
            if len(y) != len(media):
                raise ProbeInputError(f"{len(media)} items but {len(y)} {attr} labels")
            out[attr] = float((pred[attr] == y).float().mean()) if len(y) else float("nan")
        return out


class Probe(nn.Module, AttributeClassifier, ABC):
    """Media (B, *config.media_shape) in [-1, 1] -> one set of logits per attribute.

    Subclasses implement `prepare` (a fixed front end), `embed` (-> the penultimate hidden layer) and
    `prepared_logits`; the base checks input shapes and turns logits into predictions and accuracies.
    """

    config_class = ProbeConfig

    def __init__(self, config: ProbeConfig) -> None:
        super().__init__()
        self.config = config

    def check_input(self, media: Tensor) -> None:
        """ProbeInputError unless media is (B, *media_shape)."""
        want = tuple(self.config.media_shape)
        if media.ndim != len(want) + 1 or tuple(media.shape[1:]) != want:
            raise ProbeInputError(f"probe {self.config.name!r} takes {self.config.modality} of shape "
                                  f"(B, {', '.join(map(str, want))}) in [-1, 1], got {tuple(media.shape)}")

    def prepare(self, media: Tensor) -> dict[str, Tensor]:
        """The fixed, parameter-free front end (downsampling, spectrograms): media -> named tensors (B, ...).
        Training computes it once per item and trains on it."""
        return {"media": media.float()}

    @abstractmethod
    def embed(self, prepared: dict[str, Tensor]) -> Tensor:
        """Prepared inputs -> (B, feature_dim) float32: the penultimate hidden layer."""

    @abstractmethod
    def prepared_logits(self, prepared: dict[str, Tensor]) -> dict[str, Tensor]:
        """Prepared inputs -> {attr: (B, num_classes)}."""

    def features(self, media: Tensor) -> Tensor:
        """(B, *media_shape) -> (B, feature_dim) float32: the penultimate hidden layer."""
        self.check_input(media)
        return self.embed(self.prepare(media))

    def logits(self, media: Tensor) -> dict[str, Tensor]:
        """(B, *media_shape) -> {attr: (B, num_classes)}."""
        self.check_input(media)
        return self.prepared_logits(self.prepare(media))

    def forward(self, media: Tensor) -> dict[str, Tensor]:
        return self.logits(media)

    @torch.no_grad()
    def predict(self, media: Tensor, batch_size: int = 64) -> dict[str, Tensor]:
        """(B, *media_shape) -> {attr: (B,) long class index}, in chunks of `batch_size`."""
        self.check_input(media)
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        parts: dict[str, list[Tensor]] = {a: [] for a in self.attributes}
        for i in range(0, len(media), batch_size):
            for a, z in self.logits(media[i: i + batch_size].to(device)).items():
                parts[a].append(z.argmax(dim=1).cpu())
        self.train(was_training)
        return {a: torch.cat(p) if p else torch.zeros(0, dtype=torch.long) for a, p in parts.items()}

def fraction(flags: Sequence[bool]) -> float:
    """The fraction of true flags: a probe's accuracy over the prompts that ask something (NaN when none does)."""
    return sum(bool(f) for f in flags) / len(flags) if flags else float("nan")


def shipped_probe_path(name: str) -> Path:
    """checkpoints/probes/<name> of this checkout; MissingInput says how to make it when absent."""
    folder = SHIPPED_PROBES / name
    if not (folder / "config.json").is_file():
        raise MissingInput(f"{folder}: no shipped probe {name!r} (the repository's checkpoints/probes/ holds it; "
                           f"retrain with `python -m mmflow.metrics.probes.train {name} --data <train folder> "
                           f"--out {folder}` or pass the folder's path)")
    return folder


def load_probe(path: str | os.PathLike | None = None, name: str | None = None) -> Probe:
    """A probe from its model folder (`path`), or the shipped one called `name`."""
    import mmflow.metrics.probes  # noqa: F401  (registers the probe model types)

    if path is None:
        if name is None:
            raise ValueError("load_probe needs a folder path or a shipped probe name")
        path = shipped_probe_path(name)
    model = load_model(path)
    if not isinstance(model, Probe):
        raise ProbeInputError(f"{path}: a {type(model).__name__} model, not a probe")
    return model.eval()
