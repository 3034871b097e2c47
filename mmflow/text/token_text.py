"""A word-level text embedder for closed caption vocabularies: a word tokenizer plus a small learned
token embedding, the light alternative to the frozen transformers encoders of mmflow.text.encoder.

Tasks whose captions come from a fixed word list (e.g. "a handwritten seven", the digits task)
condition the MM-DiT on this: captions -> word ids (B, S) with a padding mask -> nn.Embedding (+ a
learned position) -> the MM-DiT's "text" (B, S, dim) / "text_mask" (B, S) / "pooled" (B, dim).
The vocabulary is part of the model config, so a saved embedder tokenizes on its own (no recipe).
It is trained jointly with the MM-DiT; it knows nothing about language beyond its word list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from mmflow.config import check
from mmflow.errors import UserError
from mmflow.model_io import register_model
from mmflow.text.truncation import truncation_warnings

__all__ = ["PAD_ID", "TokenTextConfig", "TokenTextEmbedder", "UnknownWordError", "WordTokenizer",
           "build_vocabulary", "split_words"]

PAD_ID = 0  # id 0 is padding; word i of the vocabulary has id i + 1
_PUNCTUATION = re.compile(r"[.,;:!?\"']")


class UnknownWordError(UserError, ValueError):
    """A prompt uses a word the stand-in tokenizer has never seen (it has no <unk>: that would hide typos)."""


def split_words(text: str) -> list[str]:
    """'A handwritten Seven.' -> ['a', 'handwritten', 'seven']: lower case, punctuation dropped."""
    return _PUNCTUATION.sub(" ", text.lower()).split()


def build_vocabulary(captions: Iterable[str]) -> tuple[str, ...]:
    """Sorted distinct words of `captions`: deterministic, whatever order the captions come in."""
    return tuple(sorted({w for c in captions for w in split_words(c)}))


@dataclass
class TokenTextConfig:
    vocab: tuple[str, ...] = field(default=(), metadata={"help": "known words (ids 1..len); 0 is padding"})
    dim: int = field(default=64, metadata={"min": 1, "help": "token width = the MM-DiT's context_dim and pooled_dim"})
    max_length: int = field(default=8, metadata={"min": 1, "help": "S: every caption is padded to this many tokens"})

    def validate(self) -> None:
        check(len(self.vocab) > 0, "vocab", "needs at least one word")
        check(len(set(self.vocab)) == len(self.vocab), "vocab", "words must be distinct")
        bad = [w for w in self.vocab if split_words(w) != [w]]
        check(not bad, "vocab", f"words must be lower case, without spaces or punctuation: {bad}")


class WordTokenizer:
    """Word-level tokenizer over a fixed vocabulary: prompts -> ids (B, S) and mask (B, S), S = max_length."""

    def __init__(self, vocab: Sequence[str], max_length: int) -> None:
        self.vocab = tuple(vocab)
        self.max_length = max_length
        self.word_to_id = {w: i + 1 for i, w in enumerate(self.vocab)}

    def encode(self, prompts: Sequence[str], truncate: bool = False) -> tuple[Tensor, Tensor]:
        """Prompts -> ids (B, S) long (PAD_ID after the words) and mask (B, S) bool (True = a word).

        truncate: keep the first max_length words of longer prompts (sampling; see truncation_warnings)
        instead of raising. Raises UnknownWordError naming the word and the vocabulary (any word, kept
        or not: a typo stays an error), ValueError for empty prompts or, without truncate, too long ones.
        """
        s = self.max_length
        ids = torch.full((len(prompts), s), PAD_ID, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            words = split_words(prompt)
            unknown = [w for w in words if w not in self.word_to_id]
            if unknown:
                raise UnknownWordError(
                    f"prompt {prompt!r}: {', '.join(repr(w) for w in unknown)} "
                    f"{'is' if len(unknown) == 1 else 'are'} not in the vocabulary of this text embedder "
                    f"(a learned stand-in that knows only its training captions' words): {', '.join(self.vocab)}")
            if not words or (len(words) > s and not truncate):
                raise ValueError(f"prompt {prompt!r} has {len(words)} words; this text embedder takes 1 to {s}")
            words = words[:s]
            ids[row, : len(words)] = torch.tensor([self.word_to_id[w] for w in words])
        return ids, ids != PAD_ID

    def truncation_warnings(self, prompts: Sequence[str]) -> list[str]:
        """One message per prompt with more than max_length words (encode(truncate=True) keeps the first ones)."""
        # the digits recipe sets this limit as model.max_text_length; a saved embedder's config.json as max_length
        return truncation_warnings(prompts, [len(split_words(p)) for p in prompts], self.max_length,
                                   "the word-level text embedder", "max_text_length", unit="words")

    def decode(self, ids: Tensor) -> list[str]:
        """ids (B, S) -> the prompts' normalised words joined by spaces (padding dropped)."""
        return [" ".join(self.vocab[i - 1] for i in row.tolist() if i != PAD_ID) for row in ids]


@register_model("token_text")
class TokenTextEmbedder(nn.Module):
    """Word ids (B, S) + mask (B, S) -> {"text": (B, S, dim), "text_mask": (B, S), "pooled": (B, dim)}."""

    config_class = TokenTextConfig

    def __init__(self, config: TokenTextConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.tokenizer = WordTokenizer(config.vocab, config.max_length)
        self.tokens = nn.Embedding(len(config.vocab) + 1, config.dim, padding_idx=PAD_ID)
        # the MM-DiT's text stream has no positional encoding: a learned one keeps word order
        # visible, as a real encoder's contextual outputs would
        self.positions = nn.Parameter(torch.zeros(config.max_length, config.dim))
        nn.init.normal_(self.tokens.weight, std=1.0)
        with torch.no_grad():
            self.tokens.weight[PAD_ID].zero_()
        nn.init.normal_(self.positions, std=0.1)

    # ---- embedding ----------------------------------------------------------------------------------

    def forward(self, ids: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """ids (B, S) long, mask (B, S) bool -> the MM-DiT's text condition (see the class docstring)."""
        s = ids.shape[1]
        if s > self.config.max_length:
            raise ValueError(f"ids have {s} tokens; this text embedder takes at most {self.config.max_length}")
        words = self.tokens(ids)  # (B, S, dim); padding rows are zero
        m = mask[..., None].to(words.dtype)  # (B, S, 1)
        pooled = (words * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, dim) mean over the real words
        text = (words + self.positions[:s]) * m  # (B, S, dim)
        return {"text": text, "text_mask": mask, "pooled": pooled}

    def embed(self, prompts: Sequence[str], truncate: bool = False) -> dict[str, Tensor]:
        """Prompts -> the MM-DiT's text condition, on this model's device (truncate and errors as
        WordTokenizer.encode)."""
        ids, mask = self.tokenizer.encode(prompts, truncate)
        device = self.tokens.weight.device
        return self(ids.to(device), mask.to(device))

    def truncation_warnings(self, prompts: Sequence[str]) -> list[str]:
        """Messages for prompts longer than max_length words, as WordTokenizer.truncation_warnings."""
        return self.tokenizer.truncation_warnings(prompts)
