import math

import pytest
import torch

from mmflow.errors import UserError
from mmflow.metrics.clip_score import clip_score, clip_scores
from mmflow.metrics.errors import FeatureMismatch


def test_known_cosines_with_negatives_clipped_to_zero():
    media = torch.tensor([[1.0, 0.0], [3.0, 0.0], [1.0, 1.0], [0.0, 2.0], [1.0, 0.0]], dtype=torch.float64)
    text = torch.tensor([[5.0, 0.0], [1.0, math.sqrt(3)], [1.0, 0.0], [0.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    # cos: 1 (parallel, lengths differ), 1/2 (60 deg), 1/sqrt2 (45 deg), -1 -> 0, -1/sqrt2 -> 0
    expected = torch.tensor([100.0, 50.0, 100 / math.sqrt(2), 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(clip_scores(media, text), expected, rtol=1e-12, atol=1e-12)
    assert clip_score(media, text) == pytest.approx(float(expected.mean()), rel=1e-12)


def test_scale_invariant_and_a_zero_vector_scores_zero():
    gen = torch.Generator().manual_seed(0)
    m, t = torch.randn(6, 8, generator=gen), torch.randn(6, 8, generator=gen)
    torch.testing.assert_close(clip_scores(3 * m, 0.1 * t), clip_scores(m, t))
    assert float(clip_scores(torch.zeros(1, 8), t[:1])[0]) == 0.0


def test_shape_errors_name_both_shapes():
    with pytest.raises(FeatureMismatch, match=r"media \(4, 512\) and text \(3, 512\)") as info:
        clip_score(torch.zeros(4, 512), torch.zeros(3, 512))
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)
    with pytest.raises(FeatureMismatch, match=r"media \(4, 8, 512\)"):
        clip_score(torch.zeros(4, 8, 512), torch.zeros(4, 8, 512))
    with pytest.raises(FeatureMismatch, match="no pairs"):
        clip_score(torch.zeros(0, 512), torch.zeros(0, 512))
