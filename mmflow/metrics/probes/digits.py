"""The digits probe: does a generated digit look like the digit it was asked for?

An RBF SVC on scikit-learn's 8x8 originals (0..16), fitted on a fixed stratified 75% split; its own
accuracy on the other 25% is the ceiling the generated images are measured against. Generated
(N, 1, S, S) images in [-1, 1] are area-downsampled to 8x8 and mapped back to 0..16 first
(mmflow.data.digits.pixels_to_digits), the inverse of how the training images were made.

The SVC is refitted (deterministically, well under a second) rather than shipped: it has no
safetensors form, and pickles are not loaded. `DigitsProbe` puts it behind the probe interface
(`predict`, `accuracy`, `features` = the 64 pixels scaled to [0, 1]); `digit_classifier()` keeps the
numpy interface the digits task uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor, nn

from mmflow.data.digits import DIGITS_MAX, load_digits_8x8, pixels_to_digits
from mmflow.metrics.probes.base import AttributeClassifier, ProbeConfig, ProbeInputError

__all__ = ["DigitClassifier", "DigitsProbe", "HELD_OUT", "SPLIT_SEED", "digit_accuracy", "digit_classifier"]

SPLIT_SEED = 0
HELD_OUT = 0.25


@dataclass
class DigitClassifier:
    model: object  # a fitted sklearn estimator on (N, 64) features in 0..16
    held_out_accuracy: float  # its accuracy on real digits it was not fitted on

    def predict(self, images: Tensor) -> np.ndarray:
        """Images (N, 1, S, S) in [-1, 1] -> predicted digits (N,) int."""
        return self.model.predict(pixels_to_digits(images)).astype(np.int64)

    def accuracy(self, images: Tensor, labels: Tensor | np.ndarray) -> float:
        """Fraction of images (N, 1, S, S) classified as their label (N,)."""
        labels = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels).astype(np.int64)
        if len(labels) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(labels)} labels")
        return float((self.predict(images) == labels).mean())


@lru_cache(maxsize=1)
def digit_classifier() -> DigitClassifier:
    """The (cached) classifier; fitting takes well under a second."""
    from sklearn.model_selection import train_test_split
    from sklearn.svm import SVC

    images, labels = load_digits_8x8()
    x = images.reshape(len(images), 64)
    x_fit, x_test, y_fit, y_test = train_test_split(x, labels, test_size=HELD_OUT, random_state=SPLIT_SEED,
                                                    stratify=labels)
    model = SVC(kernel="rbf", gamma=0.001, C=10.0).fit(x_fit, y_fit)  # the usual settings for these digits
    return DigitClassifier(model, float((model.predict(x_test) == y_test).mean()))


def digit_accuracy(images: Tensor, labels: Tensor | np.ndarray) -> float:
    """Fraction of images (N, 1, S, S) in [-1, 1] the real-digit classifier assigns to their label (N,)."""
    return digit_classifier().accuracy(images, labels)


class DigitsProbe(nn.Module, AttributeClassifier):
    """Images (B, 1, S, S) in [-1, 1], S a multiple of 8 -> digit (B,); features: the 8x8 pixels (B, 64) in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = digit_classifier()
        self.config = ProbeConfig(name="digits", modality="image", media_shape=[1, 8, 8],
                                  attributes={"digit": [str(d) for d in range(10)]}, feature_dim=64,
                                  held_out_accuracy={"digit": self.classifier.held_out_accuracy},
                                  held_out_items=math.ceil(HELD_OUT * len(load_digits_8x8()[1])),  # as sklearn's split
                                  command="(refitted on load: mmflow.metrics.probes.digits.digit_classifier)")

    def check_input(self, media: Tensor) -> None:
        if media.ndim != 4 or media.shape[1] != 1 or media.shape[2] != media.shape[3] or media.shape[2] % 8:
            raise ProbeInputError(f"probe 'digits' takes images of shape (B, 1, S, S) with S a multiple of 8 "
                                  f"in [-1, 1], got {tuple(media.shape)}")

    def features(self, media: Tensor) -> Tensor:
        """(B, 1, S, S) -> (B, 64) float32: the classifier's input, scaled to [0, 1]."""
        self.check_input(media)
        return torch.from_numpy(pixels_to_digits(media) / DIGITS_MAX).float()

    def predict(self, media: Tensor) -> dict[str, Tensor]:
        """(B, 1, S, S) -> {"digit": (B,) long}, by the SVC."""
        self.check_input(media)
        return {"digit": torch.from_numpy(self.classifier.predict(media))}
