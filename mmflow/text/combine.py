"""Several text encoders as one condition, SD3-style, with per-encoder caption dropout for CFG.

Layout. Encoders sharing a `group` have their token embeddings concatenated along channels (SD3's
CLIP-L (77, 768) + CLIP-G (77, 1280) -> (77, 2048)); each group is zero-padded in channels to the
common width (`width`, default the widest group) and the groups are concatenated along the sequence
in order of first appearance (SD3: (77, 2048 -> 4096) then T5 (256, 4096) -> (333, 4096)). Masks
follow the tokens (within a group a position is real if any member's token is); pooled vectors
are concatenated along channels in encoder order (pooled: 'none' adds nothing, as SD3's T5).

    SD3:    encoders: [{path: clip_l, group: clip, layer: penultimate},
                       {path: clip_g, group: clip, layer: penultimate},
                       {path: t5, pooled: none, max_length: 256}]

Dropout. Each encoder is dropped independently with its own `dropout` probability, before the
combination: a dropped row takes that encoder's null condition, the encoding of "" (null_mode: empty,
SD3) or zeros with a fully masked sequence (null_mode: zeros). Masks come from a torch.Generator
(`drop_masks`) or are passed in, so the trainer controls the randomness. Cached embeddings
(`encode_each` written by `mmflow prepare`) go through the same `combine_parts` without the models.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from mmflow.config import ConfigError, check
from mmflow.flow.cfg import condition_dropout_mask
from mmflow.text.encoder import TextEmbedding, TextEncoder, TextEncoderConfig

__all__ = ["TextConditioner", "TextConditionerConfig", "combine_embeddings", "combine_parts", "drop_masks", "drop_rows",
           "zeros_like_null"]


@dataclass
class TextConditionerConfig:
    encoders: list[TextEncoderConfig] = field(default_factory=lambda: [TextEncoderConfig()], metadata={
        "help": "text encoders, in order; see TextEncoderConfig"})
    width: int | None = field(default=None, metadata={"min": 1, "help": "token width after zero padding; null = widest group"})
    null_mode: Literal["empty", "zeros"] = field(default="empty", metadata={
        "help": "a dropped encoder's condition: the empty prompt's encoding, or zeros (masked)"})

    def validate(self) -> None:
        check(len(self.encoders) > 0, "encoders", "needs at least one text encoder")
        for i, enc in enumerate(self.encoders):  # also when built in code, not by from_dict
            try:
                enc.validate()
            except ConfigError as e:
                raise ConfigError(e.message, f"encoders[{i}].{e.key}" if e.key else f"encoders[{i}]") from e
        keys = [e.key for e in self.encoders]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        check(not dup, "encoders", f"encoder names {dup} repeat; give each a distinct `name`")
        for members in self.groups():
            lengths = {self.encoders[i].max_length for i in members}
            check(len(lengths) == 1, f"encoders[{members[-1]}].max_length",
                  f"encoders of group {self.encoders[members[0]].group!r} are channel-concatenated, so they need one "
                  f"max_length; got {sorted(lengths)}")
        widest = max(self.group_widths())
        check(self.width is None or self.width >= widest, "width",
              f"{self.width} is narrower than the widest group ({widest} channels)")

    def groups(self) -> list[list[int]]:
        """Encoder indices per group, groups in order of first appearance ('' = a group of its own)."""
        order: dict[str, list[int]] = {}
        for i, enc in enumerate(self.encoders):
            order.setdefault(enc.group or f"\0{i}", []).append(i)  # "\0" keeps own-groups apart from named ones
        return list(order.values())

    def group_widths(self) -> list[int]:
        return [sum(self.encoders[i].token_width for i in g) for g in self.groups()]

    @property
    def names(self) -> list[str]:
        return [e.key for e in self.encoders]

    @property
    def out_width(self) -> int:
        """D of the combined tokens (B, S, D): the MM-DiT's context_dim."""
        return self.width or max(self.group_widths())

    @property
    def pooled_width(self) -> int:
        """P of the combined pooled (B, P): the MM-DiT's pooled_dim (0 = no pooled input)."""
        return sum(e.pooled_width for e in self.encoders)

    @property
    def seq_len(self) -> int:
        """S of the combined tokens: the sum of each group's max_length."""
        return sum(self.encoders[g[0]].max_length for g in self.groups())

    def fingerprint(self) -> str:
        """sha256 of the encoders' fingerprints, names, layout and null mode (dropout left out)."""
        blob = json.dumps({"encoders": [[e.key, e.group, e.fingerprint()] for e in self.encoders],
                           "width": self.out_width, "null_mode": self.null_mode}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# Pure functions: layout and dropout on TextEmbeddings (no models needed, e.g. for cached embeddings)
# --------------------------------------------------------------------------------------------------


def combine_embeddings(parts: Sequence[TextEmbedding], groups: Sequence[Sequence[int]],
                       width: int | None = None) -> TextEmbedding:
    """parts[i] (B, S_i, D_i) laid out as described in the module docstring -> (B, sum_g S_g, width).

    Every part must have the same batch; members of a group the same S. Output dtype: the widest of the parts'.
    """
    dtype = functools.reduce(torch.promote_types, [p.tokens.dtype for p in parts])
    rows = {p.batch_size for p in parts}
    if len(rows) != 1:
        raise ValueError(f"text embeddings to combine have different batch sizes {sorted(rows)}")
    blocks = []
    for g in groups:
        lengths = {parts[i].tokens.shape[1] for i in g}
        if len(lengths) != 1:
            raise ValueError(f"encoders {list(g)} share a group but have sequence lengths {sorted(lengths)}")
        tokens = torch.cat([parts[i].tokens.to(dtype) for i in g], dim=-1)  # (B, S_g, sum D_i)
        mask = functools.reduce(torch.logical_or, [parts[i].mask for i in g])  # (B, S_g)
        blocks.append((tokens, mask))
    widest = max(t.shape[-1] for t, _ in blocks)
    width = width or widest
    if width < widest:
        raise ValueError(f"width {width} is narrower than the widest group ({widest} channels)")
    tokens = torch.cat([nn.functional.pad(t, (0, width - t.shape[-1])) for t, _ in blocks], dim=1)  # (B, S, width)
    mask = torch.cat([m for _, m in blocks], dim=1)  # (B, S)
    pooled = torch.cat([p.pooled.to(dtype) for p in parts], dim=-1)  # (B, sum P_i)
    return TextEmbedding(tokens, mask, pooled)


def zeros_like_null(like: TextEmbedding) -> TextEmbedding:
    """A batch-1 zeros null condition shaped like one row of `like`: zero tokens, no visible token, zero pooled."""
    return TextEmbedding(like.tokens.new_zeros(1, *like.tokens.shape[1:]), like.mask.new_zeros(1, like.mask.shape[1]),
                         like.pooled.new_zeros(1, like.pooled.shape[1]))


def drop_rows(emb: TextEmbedding, null: TextEmbedding, drop: Tensor) -> TextEmbedding:
    """emb with the rows where drop (B,) bool is True replaced by null (batch 1 or B)."""
    if drop.shape != (emb.batch_size,) or drop.dtype != torch.bool:
        raise ValueError(f"drop mask must be bool ({emb.batch_size},), got {drop.dtype} {tuple(drop.shape)}")
    null = null.to(emb.tokens.device, emb.tokens.dtype)
    d = drop.to(emb.tokens.device)
    return TextEmbedding(torch.where(d[:, None, None], null.tokens, emb.tokens),  # (B, S, D)
                         torch.where(d[:, None], null.mask, emb.mask),  # (B, S)
                         torch.where(d[:, None], null.pooled, emb.pooled))  # (B, P)


def drop_masks(config: TextConditionerConfig, batch_size: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> dict[str, Tensor]:
    """{encoder name: (B,) bool}, True = drop; drawn in encoder order, one draw each (also for dropout 0)."""
    return {e.key: condition_dropout_mask(batch_size, e.dropout, generator, device) for e in config.encoders}


def combine_parts(config: TextConditionerConfig, parts: Mapping[str, TextEmbedding],
                  nulls: Mapping[str, TextEmbedding] | None = None,
                  drop: Mapping[str, Tensor] | None = None) -> TextEmbedding:
    """Per-encoder embeddings (by name) -> one TextEmbedding, after dropping rows where drop[name] is True.

    nulls: per-encoder batch-1 null conditions, needed for null_mode 'empty' when something is dropped
    (TextConditioner.null_each(), or cached beside the embeddings); null_mode 'zeros' needs none.
    """
    missing = [n for n in config.names if n not in parts]
    if missing:
        raise KeyError(f"text embeddings for encoders {missing} are missing (have {sorted(parts)})")
    unknown = sorted(set(drop or {}) - set(config.names))
    if unknown:
        raise KeyError(f"drop masks for unknown encoders {unknown}; encoders are {config.names}")
    out = []
    for name in config.names:
        emb = parts[name]
        if drop is not None and name in drop and bool(drop[name].any()):
            if config.null_mode == "zeros":
                null = zeros_like_null(emb)
            elif nulls is None or name not in nulls:
                raise KeyError(f"null_mode 'empty' needs the empty prompt's encoding for encoder {name!r}; pass nulls")
            else:
                null = nulls[name]
            emb = drop_rows(emb, null, drop[name])
        out.append(emb)
    return combine_embeddings(out, config.groups(), config.out_width)


# --------------------------------------------------------------------------------------------------
# The conditioner
# --------------------------------------------------------------------------------------------------


class TextConditioner(nn.Module):
    """All of a recipe's frozen text encoders: prompts (+ dropout) -> one TextEmbedding.

        cond = TextConditioner(cfg, device="cuda")
        emb = cond(captions, generator=g)        # training: per-encoder CFG dropout
        null = cond.null_condition()             # sampling: u(null) for CFG, batch 1
    """

    def __init__(self, config: TextConditionerConfig, device: torch.device | str | None = None) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.encoders = nn.ModuleDict({e.key: TextEncoder(e, device) for e in config.encoders})

    @property
    def names(self) -> list[str]:
        return self.config.names

    @property
    def out_width(self) -> int:
        return self.config.out_width

    @property
    def pooled_width(self) -> int:
        return self.config.pooled_width

    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    def encode_each(self, prompts: Sequence[str]) -> dict[str, TextEmbedding]:
        """{name: that encoder's TextEmbedding}: what a cache stores (no dropout)."""
        return {name: enc(prompts) for name, enc in self.encoders.items()}

    def truncation_warnings(self, prompts: Sequence[str]) -> list[str]:
        """Every encoder's messages for prompts longer than its max_length, in encoder order."""
        return [msg for enc in self.encoders.values() for msg in enc.truncation_warnings(prompts)]

    def null_each(self) -> dict[str, TextEmbedding]:
        """{name: batch-1 null condition} under the configured null mode (the empty prompt's is cached)."""
        return {name: enc.null(self.config.null_mode) for name, enc in self.encoders.items()}

    def drop_masks(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return drop_masks(self.config, batch_size, generator)

    def combine(self, parts: Mapping[str, TextEmbedding], drop: Mapping[str, Tensor] | None = None) -> TextEmbedding:
        """Combine per-encoder embeddings (fresh or cached) after dropping the rows drop marks."""
        needs_null = self.config.null_mode == "empty" and drop is not None and any(bool(m.any()) for m in drop.values())
        return combine_parts(self.config, parts, self.null_each() if needs_null else None, drop)

    def forward(self, prompts: Sequence[str], drop: Mapping[str, Tensor] | None = None,
                generator: torch.Generator | None = None) -> TextEmbedding:
        """Encode and combine: tokens (B, seq_len, out_width), mask (B, seq_len), pooled (B, pooled_width).

        drop: {name: (B,) bool} rows to replace by that encoder's null; or generator: draw them with
        each encoder's `dropout` probability; neither: no dropout (sampling).
        """
        if drop is not None and generator is not None:
            raise ValueError("pass either drop masks or a generator, not both")
        if generator is not None:
            drop = self.drop_masks(len(prompts), generator)
        return self.combine(self.encode_each(prompts), drop)

    def null_condition(self) -> TextEmbedding:
        """Every encoder dropped, batch 1: the unconditional input u(null) of classifier-free guidance."""
        nulls = self.null_each()
        return combine_embeddings([nulls[n] for n in self.names], self.config.groups(), self.config.out_width)
