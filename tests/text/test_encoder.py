"""One text encoder on tiny random BERT / T5 / CLIP folders: outputs against the transformers model run by hand."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoModel,
    AutoTokenizer,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5EncoderModel,
)

from mmflow.config import ConfigError, from_dict
from mmflow.text import TextEmbedding, TextEncoder, TextEncoderConfig

PROMPTS = ["a smiling face", "the happy dog with a red drum", ""]


def reference(model_cls, folder, prompts, max_length):
    """(input mask (B, S) bool, transformers output with hidden states) for prompts, run directly."""
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    batch = tok(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    model = model_cls.from_pretrained(folder, local_files_only=True).eval()
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    return batch["attention_mask"].bool(), out


def encoder(folder, **kw) -> TextEncoder:
    return TextEncoder(TextEncoderConfig(path=str(folder), **kw))


def test_bert_tokens_mask_and_mean_pooling_match_the_model(tiny_models):
    enc = encoder(tiny_models["bert"], max_length=10)
    emb = enc(PROMPTS)
    mask, out = reference(AutoModel, tiny_models["bert"], PROMPTS, 10)
    assert isinstance(emb, TextEmbedding) and emb.tokens.shape == (3, 10, 32) and emb.pooled.shape == (3, 32)
    assert emb.mask.dtype == torch.bool and torch.equal(emb.mask, mask)
    # [CLS] words [SEP], then padding: 3 words -> 5 real tokens, "" -> [CLS] [SEP]
    assert emb.mask.sum(1).tolist() == [5, 9, 2] and not emb.mask[:, -1].any()
    assert torch.equal(emb.tokens, out.last_hidden_state)
    h, m = out.last_hidden_state, mask.float()
    manual = torch.stack([h[i, m[i].bool()].mean(0) for i in range(3)])  # mean over real tokens only
    torch.testing.assert_close(emb.pooled, manual, rtol=1e-5, atol=1e-6)
    assert enc.token_width == 32 and enc.pooled_width == 32 and enc.seq_len == 10


def test_pooled_variants_and_normalisation(tiny_models):
    folder = tiny_models["bert"]
    _, out = reference(AutoModel, folder, PROMPTS, 10)
    normed = encoder(folder, max_length=10, normalize_pooled=True)(PROMPTS).pooled
    torch.testing.assert_close(normed.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(normed, F.normalize(encoder(folder, max_length=10)(PROMPTS).pooled, dim=-1))
    torch.testing.assert_close(encoder(folder, max_length=10, pooled="cls")(PROMPTS).pooled, out.last_hidden_state[:, 0])
    torch.testing.assert_close(encoder(folder, max_length=10, pooled="projection")(PROMPTS).pooled, out.pooler_output)
    none = encoder(folder, max_length=10, pooled="none")
    assert none(PROMPTS).pooled.shape == (3, 0) and none.pooled_width == 0


def test_penultimate_layer_is_hidden_states_minus_two(tiny_models):
    for name, cls in (("bert", AutoModel), ("clip", CLIPTextModelWithProjection)):
        emb = encoder(tiny_models[name], max_length=12, layer="penultimate")(PROMPTS)
        _, out = reference(cls, tiny_models[name], PROMPTS, 12)
        assert torch.equal(emb.tokens, out.hidden_states[-2])
        assert not torch.equal(emb.tokens, out.last_hidden_state)


def test_any_layer_by_index(tiny_models):
    # the tiny models have 2 layers: hidden_states holds the embeddings and 2 layer outputs
    for name, cls in (("bert", AutoModel), ("t5", T5EncoderModel), ("clip", CLIPTextModelWithProjection)):
        _, out = reference(cls, tiny_models[name], PROMPTS, 8)
        for k in (0, 1, -2):
            emb = encoder(tiny_models[name], max_length=8, layer=k)(PROMPTS)
            assert torch.equal(emb.tokens, out.hidden_states[k]), (name, k)
        assert not torch.equal(out.hidden_states[1], out.hidden_states[0])
        # the pooled vector stays the final layer's, whatever the tokens' layer
        torch.testing.assert_close(encoder(tiny_models[name], max_length=8, layer=1)(PROMPTS).pooled,
                                   encoder(tiny_models[name], max_length=8)(PROMPTS).pooled)
    a = TextEncoderConfig(path=str(tiny_models["bert"]), max_length=8, layer=1)
    assert a.fingerprint() != TextEncoderConfig(path=str(tiny_models["bert"]), max_length=8).fingerprint()


def test_t5_encoder(tiny_models):
    enc = encoder(tiny_models["t5"], max_length=8)
    emb = enc(PROMPTS)
    mask, out = reference(T5EncoderModel, tiny_models["t5"], PROMPTS, 8)
    assert enc.info.model_class == "T5EncoderModel" and enc.pooled_mode == "mean"
    assert emb.mask.sum(1).tolist() == [4, 8, 1]  # words + </s>, truncated to 8, "" -> </s>
    assert torch.equal(emb.mask, mask) and torch.equal(emb.tokens, out.last_hidden_state)
    m = mask.unsqueeze(-1).float()
    torch.testing.assert_close(emb.pooled, (out.last_hidden_state * m).sum(1) / m.sum(1))
    with pytest.raises(ConfigError, match="pooled.*T5"):
        encoder(tiny_models["t5"], pooled="cls")


def test_unmasked_encoding_sees_the_padding_as_sd3_does(tiny_models):
    enc = encoder(tiny_models["t5"], max_length=8, attention_mask=False, pooled="none")
    emb = enc(PROMPTS)
    tok = AutoTokenizer.from_pretrained(tiny_models["t5"], local_files_only=True)
    ids = tok(PROMPTS, padding="max_length", max_length=8, truncation=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():  # StableDiffusion3Pipeline calls its T5 (and CLIPs) with input ids alone
        ref = T5EncoderModel.from_pretrained(tiny_models["t5"], local_files_only=True).eval()(ids).last_hidden_state
    assert torch.equal(emb.tokens, ref) and bool(emb.mask.all())  # every position is visible downstream too
    masked = encoder(tiny_models["t5"], max_length=8, pooled="none")(PROMPTS).tokens
    assert not torch.allclose(emb.tokens[0], masked[0])  # bidirectional: the padding changes the real tokens


def test_clip_pooled_is_projection_or_pooler_output(tiny_models):
    enc = encoder(tiny_models["clip"], max_length=12)
    emb = enc(PROMPTS)
    mask, out = reference(CLIPTextModelWithProjection, tiny_models["clip"], PROMPTS, 12)
    assert enc.info.model_class == "CLIPTextModelWithProjection" and enc.pooled_width == 24
    assert emb.pooled.shape == (3, 24) and torch.equal(emb.pooled, out.text_embeds)
    assert torch.equal(emb.tokens, out.last_hidden_state) and torch.equal(emb.mask, mask)
    plain = encoder(tiny_models["clip_plain"], max_length=12)
    mask, out = reference(CLIPTextModel, tiny_models["clip_plain"], PROMPTS, 12)
    assert plain.info.model_class == "CLIPTextModel" and plain.pooled_width == 32
    assert torch.equal(plain(PROMPTS).pooled, out.pooler_output)


def test_truncation_and_fixed_length(tiny_models):
    enc = encoder(tiny_models["bert"], max_length=6)
    emb = enc(["a " * 50, "dog"])
    assert emb.tokens.shape == (2, 6, 32)
    assert emb.mask[0].all() and emb.mask[1].tolist() == [True, True, True, False, False, False]


def test_frozen_eval_no_grad(tiny_models):
    enc = encoder(tiny_models["bert"], max_length=8)
    enc.train()  # a trainer calling train() on every module must not switch dropout on
    assert not enc.training and not enc.model.training
    assert all(not p.requires_grad for p in enc.parameters())
    with torch.enable_grad():
        emb = enc(PROMPTS)
    assert not emb.tokens.requires_grad and not emb.pooled.requires_grad
    torch.testing.assert_close(emb.tokens, enc(PROMPTS).tokens)  # no dropout noise: repeatable


def test_bfloat16(tiny_models):
    full = encoder(tiny_models["bert"], max_length=8)(PROMPTS)
    enc = encoder(tiny_models["bert"], max_length=8, dtype="bfloat16")
    half = enc(PROMPTS)
    assert next(enc.parameters()).dtype == torch.bfloat16
    assert half.tokens.dtype == torch.bfloat16 and half.pooled.dtype == torch.bfloat16
    torch.testing.assert_close(half.tokens.float(), full.tokens, rtol=0.05, atol=0.05)


def test_null_conditions(tiny_models):
    enc = encoder(tiny_models["bert"], max_length=8)
    empty = enc.null("empty")
    ref = enc([""])
    assert torch.equal(empty.tokens, ref.tokens) and torch.equal(empty.mask, ref.mask)
    assert empty.mask.sum().item() == 2  # [CLS] [SEP]
    # computed once: a planted cache entry is what comes back
    planted = TextEmbedding(empty.tokens + 1, empty.mask, empty.pooled)
    enc._empty = planted
    assert torch.equal(enc.null("empty").tokens, planted.tokens)
    zeros = enc.null("zeros")
    assert zeros.tokens.shape == (1, 8, 32) and zeros.pooled.shape == (1, 32)
    assert not zeros.tokens.any() and not zeros.mask.any() and not zeros.pooled.any()
    rows = empty.expand(4)
    assert rows.tokens.shape == (4, 8, 32) and torch.equal(rows.tokens[3], empty.tokens[0])
    assert set(empty.as_condition()) == {"text", "text_mask", "pooled"}


def test_config_errors(tiny_models, tmp_path):
    bert = str(tiny_models["bert"])
    with pytest.raises(ConfigError, match=r"r\.yaml: max_length: 100 exceeds the 24 positions"):
        from_dict(TextEncoderConfig, {"path": bert, "max_length": 100}, source="r.yaml")
    with pytest.raises(ConfigError, match="kind 't5' needs a T5"):
        from_dict(TextEncoderConfig, {"path": bert, "kind": "t5"})
    with pytest.raises(ConfigError, match=r"dropout: .*1\.5"):
        from_dict(TextEncoderConfig, {"path": bert, "dropout": 1.5})
    with pytest.raises(ConfigError, match="layer"):
        from_dict(TextEncoderConfig, {"path": bert, "layer": "middle"})
    with pytest.raises(ConfigError, match=r"layer: 3 is not a hidden state of .*2 layers, so -3\.\.2"):
        from_dict(TextEncoderConfig, {"path": bert, "layer": 3})
    with pytest.raises(ConfigError, match=r"layer: -4 is not a hidden state"):
        from_dict(TextEncoderConfig, {"path": bert, "layer": -4})
    with pytest.raises(ConfigError, match="name"):
        from_dict(TextEncoderConfig, {"path": bert, "name": "a.b"})


def test_weights_of_another_model_are_refused(tiny_models, tmp_path):
    # a BERT config.json + tokenizer beside T5 weights: loading would leave BERT randomly initialised
    folder = tmp_path / "mixed"
    shutil.copytree(tiny_models["bert"], folder)
    shutil.copy(tiny_models["t5"] / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(FileNotFoundError, match=r"lacks \d+ weights of AutoModel"):
        encoder(folder, max_length=8)


def test_fingerprint(tiny_models, copy_model, builders):
    folder = copy_model(tiny_models["bert"], "bert")
    base = TextEncoderConfig(path=str(folder), max_length=8)
    fp = base.fingerprint()
    assert len(fp) == 64 and fp == TextEncoderConfig(path=str(folder), max_length=8).fingerprint()
    # what does not change an embedding keeps the fingerprint
    assert TextEncoderConfig(path=str(folder), max_length=8, dropout=0.3, group="g", name="x").fingerprint() == fp
    # settings that change embeddings change it
    others = [TextEncoderConfig(path=str(folder), max_length=9), TextEncoderConfig(path=str(folder), max_length=8,
              layer="penultimate"), TextEncoderConfig(path=str(folder), max_length=8, pooled="cls"),
              TextEncoderConfig(path=str(folder), max_length=8, dtype="bfloat16"),
              TextEncoderConfig(path=str(folder), max_length=8, attention_mask=False)]
    assert len({fp, *(c.fingerprint() for c in others)}) == 6
    # new weights of the same shapes (same file size and header) change it
    builders["bert"](folder, seed=1)
    fp_weights = base.fingerprint()
    assert fp_weights != fp
    # so does a changed tokenizer vocabulary
    tok = folder / "tokenizer.json"
    tok.write_text(tok.read_text().replace('"drum"', '"drums"'))
    assert base.fingerprint() not in (fp, fp_weights)


LONG = "the happy dog with a red drum and a sad cat"  # 11 words, all in the tiny vocabulary


@pytest.mark.parametrize("kind, specials", [("bert", 2), ("t5", 1), ("clip", 2)])
def test_token_counts_include_special_tokens(tiny_models, kind, specials):
    enc = encoder(tiny_models[kind], max_length=6)
    # [CLS] w [SEP] (BERT), w </s> (T5), <|startoftext|> w <|endoftext|> (CLIP); uncapped by max_length
    assert enc.token_counts(["", "a smiling face", LONG]) == [specials, 3 + specials, 11 + specials]
    with pytest.raises(TypeError, match="one str"):
        enc.token_counts("a smiling face")


@pytest.mark.parametrize("kind", ["bert", "t5", "clip"])
def test_truncated_prompt_encodes_as_the_words_that_fit(tiny_models, kind):
    enc = encoder(tiny_models[kind], max_length=6)
    fit = 6 - enc.token_counts([""])[0]  # words left beside the special tokens
    emb = enc([LONG, " ".join(LONG.split()[:fit])])
    assert emb.mask.all()  # both fill all 6 tokens ...
    torch.testing.assert_close(emb.tokens[0], emb.tokens[1])  # ... with the same ones, special tokens kept
    torch.testing.assert_close(emb.pooled[0], emb.pooled[1])


def test_truncation_warnings_name_the_prompt_the_encoder_and_the_limit(tiny_models):
    enc = encoder(tiny_models["bert"], max_length=6, name="small")
    assert enc.truncation_warnings(["a smiling face", "the happy dog with"]) == []  # 5 and 6 tokens fit
    assert enc.truncation_warnings(["a dog", LONG, "a red cat", "a happy dog with a drum"]) == [
        "prompt 1 ('the happy dog with a r...') has 13 tokens; text encoder 'small' takes 6 (its max_length): "
        "truncated to 6",
        "prompt 3 ('a happy dog with a drum') has 8 tokens; text encoder 'small' takes 6 (its max_length): "
        "truncated to 6"]
