"""The digits probe is the digits task's SVC behind the probe interface: the same predictions and numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmflow.data.digits import digits_to_pixels, load_digits_8x8
from mmflow.metrics.digit_classifier import digit_classifier
from mmflow.metrics.features import get_features
from mmflow.metrics.probes import DigitsProbe, ProbeInputError


def test_same_predictions_as_the_task_classifier():
    images, labels = load_digits_8x8()
    pixels = digits_to_pixels(images[:200], 16)
    probe = DigitsProbe()
    pred = probe.predict(pixels)["digit"]
    assert pred.dtype == torch.long
    np.testing.assert_array_equal(pred.numpy(), digit_classifier().predict(pixels))
    assert probe.accuracy(pixels, {"digit": torch.from_numpy(labels[:200])})["digit"] == pytest.approx(
        digit_classifier().accuracy(pixels, labels[:200]))
    assert probe.config.held_out_accuracy == {"digit": digit_classifier().held_out_accuracy}
    assert probe.config.held_out_items == 450  # sklearn's 25% of 1797, rounded up


def test_features_are_the_pixels():
    images, _ = load_digits_8x8()
    feats = get_features("probe:digits")
    v = feats(digits_to_pixels(images[:5], 8))
    assert v.shape == (5, 64) and feats.dim == 64 and feats.modality == "image"
    np.testing.assert_allclose(v.numpy(), images[:5].reshape(5, 64) / 16, atol=1e-5)
    assert feats(digits_to_pixels(images[:5], 32)).shape == (5, 64)  # area-downsampled to 8x8 first


def test_wrong_shape_and_path():
    with pytest.raises(ProbeInputError, match=r"\(B, 1, S, S\) with S a multiple of 8.*got \(2, 3, 16, 16\)"):
        DigitsProbe().predict(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ProbeInputError, match="takes no weights path"):
        get_features("probe:digits", path="x")
