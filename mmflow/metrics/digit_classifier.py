"""Does a generated digit look like the digit it was asked for? A classifier trained on real digits.

An RBF SVC on scikit-learn's 8x8 originals (0..16), fitted on a fixed stratified 75% split; its own
accuracy on the other 25% is the ceiling the generated images are measured against. Generated
(N, 1, S, S) images in [-1, 1] are area-downsampled to 8x8 and mapped back to 0..16 first
(mmflow.data.digits.pixels_to_digits), the inverse of how the training images were made.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from torch import Tensor

from mmflow.data.digits import load_digits_8x8, pixels_to_digits

__all__ = ["DigitClassifier", "digit_accuracy", "digit_classifier"]

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
