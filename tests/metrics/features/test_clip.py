from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_hf_models import MAX_TEXT, save_tiny_clip

from mmflow.errors import UserError
from mmflow.metrics.features import get_features
from mmflow.metrics.features.weights import MissingWeights, WrongWeights


def quantized(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(B, 3, H, W) images in [-1, 1] whose values are exact uint8 levels (so the HF processor sees the same pixels)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), generator=g).float() / 127.5 - 1


def hf_pixel_values(folder, images: torch.Tensor) -> torch.Tensor:
    from transformers import AutoImageProcessor

    proc = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    arrays = [np.round((im.permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8) for im in images]
    return proc(images=arrays, return_tensors="pt")["pixel_values"]


def test_image_features_are_the_models_projection_of_hf_pixels_normalised(tiny_clip):
    from transformers import CLIPModel

    feats = get_features("clip", path=str(tiny_clip))
    x = quantized(3, 32, 32)
    v = feats(x)
    assert v.shape == (3, 16) and v.dtype == torch.float32
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(3))
    # no resize needed: the torch route and the HF processor give the same pixels, so the same embeddings
    torch.testing.assert_close(feats.pixel_values(x), hf_pixel_values(tiny_clip, x), atol=1e-5, rtol=0)
    model = CLIPModel.from_pretrained(tiny_clip, local_files_only=True).eval()
    with torch.no_grad():
        ref = model.get_image_features(pixel_values=hf_pixel_values(tiny_clip, x))
    ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
    torch.testing.assert_close(v, F.normalize(ref, dim=-1), atol=1e-5, rtol=0)


def test_resize_route_stays_close_to_the_hf_processor(tiny_clip):
    feats = get_features("clip", path=str(tiny_clip))
    x = quantized(4, 48, 64, seed=1)  # shortest edge 48 -> 32, then a centre 32 x 32 crop of 32 x 42
    ours, theirs = feats.pixel_values(x), hf_pixel_values(tiny_clip, x)
    assert ours.shape == theirs.shape == (4, 3, 32, 32)
    # PIL / torchvision bicubic on uint8 vs torch bicubic on floats: a few grey levels apart, in std units
    assert (ours - theirs).abs().mean() < 0.02  # measured 0.0044 (a third of a grey level)
    cos = F.cosine_similarity(feats.model.get_image_features(pixel_values=theirs).pooler_output, feats(x))
    assert cos.min() > 0.999


def test_video_is_the_renormalised_mean_of_frame_embeddings(tiny_clip):
    feats = get_features("clip", path=str(tiny_clip))
    video = quantized(2, 3 * 32, 32).view(2, 3, 3, 32, 32)  # (B, 3, T=3, H, W)
    frames = torch.stack([feats(video[:, :, t]) for t in range(3)], 1)  # (B, T, D)
    torch.testing.assert_close(feats(video), F.normalize(frames.mean(1), dim=-1))


def test_text_embeddings_match_the_model_and_long_prompts_warn(tiny_clip):
    feats = get_features("clip", path=str(tiny_clip))
    t = feats.encode_text(["a cat", "dog"])
    assert t.shape == (2, 16)
    tok = feats.tokenizer(["a cat", "dog"], padding=True, return_tensors="pt")
    ref = feats.model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).pooler_output
    torch.testing.assert_close(t, F.normalize(ref, dim=-1))
    long = "abcdefghijklmnopqrstuvwxyz"  # 26 letters + 2 specials > MAX_TEXT positions
    with pytest.warns(UserWarning, match=rf"prompt 1 .* has 28 tokens; the CLIP text encoder takes {MAX_TEXT}"):
        cut = feats.encode_text(["a", long])
    assert torch.isfinite(cut).all() and cut.shape == (2, 16)


def test_describe_fingerprints_the_weights(tiny_clip, tmp_path):
    a = get_features("clip", path=str(tiny_clip)).describe()
    b = get_features("clip", path=str(save_tiny_clip(tmp_path / "other", seed=1))).describe()
    assert a["name"] == "clip" and a["dim"] == 16 and a["crop"] == [32, 32] and a["mode"] == "bicubic"
    assert len(a["weights_sha256"]) == 64 and a["weights_sha256"] != b["weights_sha256"]
    assert {k: v for k, v in a.items() if k != "weights_sha256"} == {k: v for k, v in b.items() if k != "weights_sha256"}


def test_missing_and_wrong_folders_name_what_is_wanted(tiny_clip, tmp_path):
    with pytest.raises(MissingWeights, match="CLIP model folder.*save_pretrained"):
        get_features("clip")
    with pytest.raises(MissingWeights, match="nowhere"):
        get_features("clip", path=str(tmp_path / "nowhere"))
    no_weights = shutil.copytree(tiny_clip, tmp_path / "no_weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(MissingWeights, match=r"no_weights: no weights file \(\*\.safetensors\)"):
        get_features("clip", path=str(no_weights))
    no_config = shutil.copytree(tiny_clip, tmp_path / "no_config")
    (no_config / "config.json").unlink()
    with pytest.raises(WrongWeights, match="no_config: no config.json") as e:
        get_features("clip", path=str(no_config))
    assert isinstance(e.value, UserError)
