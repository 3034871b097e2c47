from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_hf_models import MAX_TEXT

from mmflow.metrics.features import get_features
from mmflow.metrics.features.weights import MissingWeights


def test_audio_features_are_the_models_embedding_of_the_hf_features(tiny_clap):
    from transformers import ClapFeatureExtractor

    feats = get_features("clap", path=str(tiny_clap))
    assert feats.sample_rate == 8000 and feats.dim == 16 and feats.modality == "audio"
    g = torch.Generator().manual_seed(0)
    stereo = torch.rand(2, 2, 6000, generator=g) * 0.5 - 0.25  # (B, C, N), shorter than the 1 s window
    v = feats(stereo)
    assert v.shape == (2, 16)
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(2))
    fe = ClapFeatureExtractor.from_pretrained(tiny_clap, local_files_only=True)
    inputs = fe(list(stereo.mean(1).numpy()), sampling_rate=8000, return_tensors="pt")
    ref = feats.model.get_audio_features(input_features=inputs["input_features"], is_longer=inputs["is_longer"])
    torch.testing.assert_close(v, F.normalize(ref.pooler_output, dim=-1), atol=1e-5, rtol=0)


def test_long_clips_are_cut_to_their_start_so_features_are_deterministic(tiny_clap):
    feats = get_features("clap", path=str(tiny_clap))
    g = torch.Generator().manual_seed(1)
    long = torch.rand(2, 1, 20000, generator=g) - 0.5  # 2.5 s, the window is 1 s
    a, b = feats(long), feats(long)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(a, feats(long[..., :8000]), atol=0, rtol=0)


def test_text_embeddings_and_truncation(tiny_clap):
    feats = get_features("clap", path=str(tiny_clap))
    t = feats.encode_text(["drum", "a cat"])
    tok = feats.tokenizer(["drum", "a cat"], padding=True, return_tensors="pt")
    ref = feats.model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).pooler_output
    torch.testing.assert_close(t, F.normalize(ref, dim=-1))
    with pytest.warns(UserWarning, match=f"the CLAP text encoder takes {MAX_TEXT}"):
        assert feats.encode_text(["abcdefghijklmnopqrstuvwxyz"]).shape == (1, 16)


def test_describe_and_missing_folder(tiny_clap):
    d = get_features("clap", path=str(tiny_clap)).describe()
    assert d["sample_rate"] == 8000 and d["max_samples"] == 8000 and len(d["weights_sha256"]) == 64
    with pytest.raises(MissingWeights, match="CLAP model folder"):
        get_features("clap")
