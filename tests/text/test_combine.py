"""Several encoders as one condition: SD3 layout, per-encoder CFG dropout, null conditions, fingerprints."""

from __future__ import annotations

import pytest
import torch

from mmflow.config import ConfigError, from_dict
from mmflow.models.mmdit import MMDiT, MMDiTConfig
from mmflow.text import (
    TextConditioner,
    TextConditionerConfig,
    TextEmbedding,
    TextEncoderConfig,
    combine_embeddings,
    combine_parts,
    drop_masks,
)

PROMPTS = ["a smiling face", "the happy dog", "a drum loop", "red cat"]


def sd3_like(models, **kw) -> TextConditionerConfig:
    """CLIP (projection 24) + BERT channel-concatenated in group "g" (8 tokens), then T5 (6 tokens, no pooled)."""
    return TextConditionerConfig(encoders=[
        TextEncoderConfig(path=str(models["clip"]), name="clip", group="g", max_length=8, layer="penultimate"),
        TextEncoderConfig(path=str(models["bert"]), name="bert", group="g", max_length=8, dropout=0.5),
        TextEncoderConfig(path=str(models["t5"]), name="t5", max_length=6, pooled="none", dropout=0.25),
    ], **kw)


@pytest.fixture(scope="module")
def conditioner(tiny_models) -> TextConditioner:
    return TextConditioner(sd3_like(tiny_models))


def test_sizes(tiny_models):
    cfg = sd3_like(tiny_models)
    assert cfg.groups() == [[0, 1], [2]]
    assert (cfg.out_width, cfg.seq_len, cfg.pooled_width) == (64, 14, 24 + 32)
    assert sd3_like(tiny_models, width=80).out_width == 80


def test_layout_matches_each_encoder(conditioner):
    parts = conditioner.encode_each(PROMPTS)
    emb = conditioner(PROMPTS)
    clip, bert, t5 = parts["clip"], parts["bert"], parts["t5"]
    assert emb.tokens.shape == (4, 14, 64) and emb.mask.shape == (4, 14) and emb.pooled.shape == (4, 56)
    assert torch.equal(emb.tokens[:, :8, :32], clip.tokens) and torch.equal(emb.tokens[:, :8, 32:], bert.tokens)
    assert torch.equal(emb.tokens[:, 8:, :32], t5.tokens)
    assert not emb.tokens[:, 8:, 32:].any()  # T5 zero-padded from 32 to 64 channels
    assert torch.equal(emb.mask[:, :8], clip.mask | bert.mask) and torch.equal(emb.mask[:, 8:], t5.mask)
    assert torch.equal(emb.pooled, torch.cat([clip.pooled, bert.pooled], dim=1))  # encoder order, T5 adds none
    assert torch.equal(conditioner.combine(parts).tokens, emb.tokens)  # cached parts give the same result


def test_combine_embeddings_by_hand():
    def part(value: float, s: int, d: int, p: int, real: int) -> TextEmbedding:
        mask = torch.arange(s).expand(2, s) < real
        return TextEmbedding(torch.full((2, s, d), value), mask, torch.full((2, p), value))

    a, b, c = part(1.0, 3, 2, 1, real=1), part(2.0, 3, 3, 2, real=2), part(3.0, 2, 4, 0, real=2)
    out = combine_embeddings([a, b, c], [[2], [0, 1]], width=6)  # group order decides sequence order
    expect = torch.tensor([[3, 3, 3, 3, 0, 0]] * 2 + [[1, 1, 2, 2, 2, 0]] * 3, dtype=torch.float32)
    assert torch.equal(out.tokens[0], expect) and torch.equal(out.tokens[1], expect)
    assert out.mask[0].tolist() == [True, True, True, True, False]  # within a group: any member's real token
    assert out.pooled[0].tolist() == [1.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="narrower"):
        combine_embeddings([a, b, c], [[2], [0, 1]], width=4)
    with pytest.raises(ValueError, match="sequence lengths"):
        combine_embeddings([a, c], [[0, 1]])


def test_dropout_replaces_exactly_the_marked_rows(conditioner):
    parts = conditioner.encode_each(PROMPTS)
    nulls = conditioner.null_each()
    drop = {"clip": torch.tensor([False, False, False, False]), "bert": torch.tensor([True, False, True, False]),
            "t5": torch.tensor([False, True, True, False])}
    emb = conditioner(PROMPTS, drop=drop)
    clean = conditioner(PROMPTS)
    for i in range(4):
        bert = nulls["bert"] if drop["bert"][i] else parts["bert"]
        t5 = nulls["t5"] if drop["t5"][i] else parts["t5"]
        j = 0 if drop["bert"][i] else i
        k = 0 if drop["t5"][i] else i
        assert torch.equal(emb.tokens[i, :8, :32], clean.tokens[i, :8, :32])  # CLIP is never dropped
        assert torch.equal(emb.tokens[i, :8, 32:], bert.tokens[j]) and torch.equal(emb.pooled[i, 24:], bert.pooled[j])
        assert torch.equal(emb.tokens[i, 8:, :32], t5.tokens[k]) and torch.equal(emb.mask[i, 8:], t5.mask[k])
    assert torch.equal(emb.tokens[3], clean.tokens[3])  # a row nothing drops is untouched
    # the null is the empty prompt's encoding
    assert torch.equal(nulls["t5"].tokens, conditioner.encoders["t5"]([""]).tokens)
    assert nulls["t5"].mask.sum().item() == 1  # "" -> </s>


def test_zeros_null(tiny_models):
    cond = TextConditioner(sd3_like(tiny_models, null_mode="zeros"))
    drop = {"clip": torch.tensor([True, False]), "bert": torch.tensor([True, False]), "t5": torch.tensor([True, True])}
    emb = cond(PROMPTS[:2], drop=drop)
    assert not emb.tokens[0].any() and not emb.mask[0].any() and not emb.pooled[0].any()  # all three dropped
    assert not emb.tokens[1, 8:].any() and not emb.mask[1, 8:].any()  # only T5 dropped
    assert torch.equal(emb.tokens[1, :8], cond(PROMPTS[:2]).tokens[1, :8])
    null = cond.null_condition()
    assert null.tokens.shape == (1, 14, 64) and not null.tokens.any() and not null.mask.any()


def test_null_condition_is_every_encoder_dropped(conditioner):
    null = conditioner.null_condition()
    all_dropped = conditioner([""], drop={n: torch.tensor([True]) for n in conditioner.names})
    assert null.tokens.shape == (1, 14, 64) and null.pooled.shape == (1, 56)
    assert torch.equal(null.tokens, all_dropped.tokens) and torch.equal(null.mask, all_dropped.mask)
    assert torch.equal(null.tokens, conditioner([""]).tokens)  # null 'empty' = the encoding of ""


def test_drop_masks_from_a_generator(tiny_models):
    cfg = sd3_like(tiny_models)
    a = drop_masks(cfg, 4000, torch.Generator().manual_seed(3))
    b = drop_masks(cfg, 4000, torch.Generator().manual_seed(3))
    assert list(a) == ["clip", "bert", "t5"] and all(torch.equal(a[k], b[k]) for k in a)
    assert not a["clip"].any()  # dropout 0
    assert abs(a["bert"].float().mean().item() - 0.5) < 0.04 and abs(a["t5"].float().mean().item() - 0.25) < 0.04
    assert (a["bert"] != a["t5"]).any()  # independent draws per encoder


def test_generator_dropout_in_forward(conditioner):
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    emb = conditioner(PROMPTS, generator=g1)
    expect = conditioner(PROMPTS, drop=drop_masks(conditioner.config, 4, g2))
    assert torch.equal(emb.tokens, expect.tokens) and torch.equal(emb.mask, expect.mask)
    with pytest.raises(ValueError, match="either"):
        conditioner(PROMPTS, drop={}, generator=g1)


def test_combine_parts_from_cache_needs_nulls(conditioner):
    parts = conditioner.encode_each(PROMPTS)
    drop = {"bert": torch.tensor([True, False, False, False])}
    with pytest.raises(KeyError, match="pass nulls"):
        combine_parts(conditioner.config, parts, None, drop)
    with pytest.raises(KeyError, match="missing"):
        combine_parts(conditioner.config, {"clip": parts["clip"]})
    with pytest.raises(KeyError, match="unknown"):
        combine_parts(conditioner.config, parts, None, {"clip_l": torch.tensor([True] * 4)})
    out = combine_parts(conditioner.config, parts, conditioner.null_each(), drop)
    assert torch.equal(out.tokens, conditioner(PROMPTS, drop=drop).tokens)


def test_config_errors(tiny_models):
    bert, t5 = str(tiny_models["bert"]), str(tiny_models["t5"])
    with pytest.raises(ConfigError, match=r"r\.yaml: encoders\[1\]\.max_length: .*one max_length; got \[6, 8\]"):
        from_dict(TextConditionerConfig, {"encoders": [{"path": bert, "group": "g", "max_length": 8},
                                                       {"path": t5, "group": "g", "max_length": 6}]}, source="r.yaml")
    with pytest.raises(ConfigError, match=r"encoders: encoder names \['bert'\] repeat"):
        from_dict(TextConditionerConfig, {"encoders": [{"path": bert, "max_length": 8}] * 2})
    with pytest.raises(ConfigError, match="width: 16 is narrower than the widest group"):
        from_dict(TextConditionerConfig, {"encoders": [{"path": bert, "max_length": 8}], "width": 16})
    with pytest.raises(ConfigError, match=r"encoders\[0\]\.path: .*does not exist"):
        TextConditioner(TextConditionerConfig(encoders=[TextEncoderConfig(path=bert + "_missing", max_length=8)]))
    with pytest.raises(ConfigError, match="at least one"):
        from_dict(TextConditionerConfig, {"encoders": []})


def test_fingerprint(tiny_models):
    fp = sd3_like(tiny_models).fingerprint()
    assert fp == sd3_like(tiny_models).fingerprint()
    changed = [sd3_like(tiny_models, width=80), sd3_like(tiny_models, null_mode="zeros")]
    regrouped = sd3_like(tiny_models)
    regrouped.encoders[1].group = ""
    redropped = sd3_like(tiny_models)
    redropped.encoders[2].dropout = 0.9
    assert len({fp, *(c.fingerprint() for c in (*changed, regrouped))}) == 4
    assert redropped.fingerprint() == fp  # dropout changes no stored embedding


def test_feeds_the_mmdit(tiny_models, conditioner):
    cfg = conditioner.config
    model = MMDiT(MMDiTConfig(in_channels=2, patch_size=(2, 2), hidden_size=32, depth=1, num_heads=2,
                              context_dim=cfg.out_width, pooled_dim=cfg.pooled_width))
    emb = conditioner(PROMPTS[:2])
    out = model(torch.randn(2, 2, 4, 4), torch.rand(2), emb.as_condition())
    assert out.shape == (2, 2, 4, 4) and torch.isfinite(out).all()
    null = conditioner.null_condition().expand(2)
    assert model(torch.randn(2, 2, 4, 4), torch.rand(2), null.as_condition()).shape == (2, 2, 4, 4)


def test_truncation_warnings_from_every_encoder_that_truncates(conditioner):
    # CLIP and BERT add 2 special tokens and take 8, T5 adds 1 and takes 6
    five, six, seven = "a happy dog with a", "a happy dog with a drum", "a happy dog with a red drum"
    assert conditioner.truncation_warnings([five, "red cat"]) == []
    (only_t5,) = conditioner.truncation_warnings([five, six])
    assert only_t5.startswith(f"prompt 1 ({six!r}) has 7 tokens; text encoder 't5' takes 6 (its max_length)")
    messages = conditioner.truncation_warnings([seven])
    assert [m.split("; ")[1] for m in messages] == [
        "text encoder 'clip' takes 8 (its max_length): truncated to 8",
        "text encoder 'bert' takes 8 (its max_length): truncated to 8",
        "text encoder 't5' takes 6 (its max_length): truncated to 6"]
