from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from mmflow.metrics.features import get_features
from mmflow.metrics.features.aesthetic import AestheticScorer, aesthetic_score, load_aesthetic_scorer
from mmflow.metrics.features.weights import MissingWeights, WrongWeights

KEYS = ["layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias", "layers.4.weight", "layers.4.bias",
        "layers.6.weight", "layers.6.bias", "layers.7.weight", "layers.7.bias"]


def random_head(width: int, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return AestheticScorer(width).state_dict()


def test_released_layout_and_scores_are_the_affine_head_of_normalised_clip_features(tiny_clip, tmp_path):
    assert list(AestheticScorer(768).state_dict()) == KEYS  # the released file's keys
    state = random_head(16)
    torch.save(state, tmp_path / "head.pth")
    scorer = load_aesthetic_scorer(tmp_path / "head.pth")
    clip = get_features("clip", path=str(tiny_clip))
    images = torch.rand(5, 3, 32, 32) * 2 - 1
    scores = aesthetic_score(images, clip, scorer, batch_size=2)
    assert scores.shape == (5,)
    x = F.normalize(clip.model.get_image_features(pixel_values=clip.pixel_values(images)).pooler_output, dim=-1)
    for i in (0, 2, 4, 6, 7):  # no activations between the linears, dropout off in eval
        x = x @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
    torch.testing.assert_close(scores, x.squeeze(-1), atol=1e-5, rtol=1e-5)


def test_safetensors_file_gives_the_same_head(tmp_path):
    state = random_head(16, seed=3)
    torch.save(state, tmp_path / "head.pth")
    save_file(state, str(tmp_path / "head.safetensors"))
    a, b = load_aesthetic_scorer(tmp_path / "head.pth"), load_aesthetic_scorer(tmp_path / "head.safetensors")
    x = torch.randn(4, 16)
    torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)
    assert a.weights_sha256 != b.weights_sha256


def test_wrong_keys_and_widths_are_named(tiny_clip, tmp_path):
    state = random_head(16)
    renamed = {k.replace("layers.", "model."): v for k, v in state.items()}
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(WrongWeights, match=r"renamed\.pth.*missing keys: layers\.0\.bias.*unexpected keys: model\.0\.bias"):
        load_aesthetic_scorer(tmp_path / "renamed.pth")
    bad = dict(state, **{"layers.2.weight": torch.zeros(128, 512)})
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WrongWeights, match=r"wrong shapes: layers\.2\.weight \(128, 512\) \(wants \(128, 1024\)\)"):
        load_aesthetic_scorer(tmp_path / "bad.pth")
    torch.save(random_head(768), tmp_path / "l14.pth")
    clip = get_features("clip", path=str(tiny_clip))  # 16-d
    with pytest.raises(WrongWeights, match="takes 768-d CLIP embeddings but the 'clip' features are 16-d"):
        aesthetic_score(torch.zeros(1, 3, 32, 32), clip, load_aesthetic_scorer(tmp_path / "l14.pth"))
    with pytest.raises(MissingWeights, match="sac\\+logos\\+ava1-l14-linearMSE.pth"):
        load_aesthetic_scorer(None)
