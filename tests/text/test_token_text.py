"""The word-level stand-in text embedder's truncation of prompts longer than max_length words."""

from __future__ import annotations

import pytest
import torch

from mmflow.text.token_text import TokenTextConfig, TokenTextEmbedder, UnknownWordError, WordTokenizer

VOCAB = ("a", "digit", "drawing", "handwritten", "of", "seven", "the")
LONG = "a handwritten drawing of the digit seven"  # 7 words


def _embedder(max_length: int = 4) -> TokenTextEmbedder:
    torch.manual_seed(0)
    return TokenTextEmbedder(TokenTextConfig(vocab=VOCAB, dim=8, max_length=max_length)).eval()


def test_truncate_keeps_the_first_max_length_words():
    tok = WordTokenizer(VOCAB, 4)
    ids, mask = tok.encode([LONG, "the digit seven"], truncate=True)
    ref_ids, ref_mask = tok.encode(["a handwritten drawing of", "the digit seven"])
    assert torch.equal(ids, ref_ids) and torch.equal(mask, ref_mask)
    assert tok.decode(ids) == ["a handwritten drawing of", "the digit seven"]


def test_without_truncate_long_prompts_still_raise():
    with pytest.raises(ValueError, match="7 words; this text embedder takes 1 to 4"):
        WordTokenizer(VOCAB, 4).encode([LONG])


def test_truncate_keeps_the_other_errors():
    tok = WordTokenizer(VOCAB, 4)
    with pytest.raises(UnknownWordError, match="'elephant'"):  # even past the limit: a typo stays an error
        tok.encode(["a handwritten drawing of an elephant"], truncate=True)
    with pytest.raises(ValueError, match="0 words"):
        tok.encode([" . "], truncate=True)


def test_embed_truncated_equals_embed_of_the_first_words():
    emb = _embedder()
    with torch.no_grad():
        cut, first = emb.embed([LONG], truncate=True), emb.embed(["a handwritten drawing of"])
    assert all(torch.equal(cut[k], first[k]) for k in ("text", "text_mask", "pooled"))
    with pytest.raises(ValueError, match="1 to 4"):
        emb.embed([LONG])


def test_truncation_warnings_name_the_prompt_and_the_limit():
    emb = _embedder()
    assert emb.truncation_warnings(["the digit seven", "a drawing of seven", "A handwritten Seven."]) == []
    expected = ["prompt 1 ('a handwritten drawing...') has 7 words; the word-level text embedder takes 4 "
                "(max_text_length): truncated to 4"]
    assert emb.truncation_warnings(["seven", LONG]) == expected
    assert emb.tokenizer.truncation_warnings(["seven", LONG]) == expected
