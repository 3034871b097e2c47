"""What the transformers-backed extractors (CLIP, CLAP) share: offline loading of a local model folder,
the projected embedding out of either transformers API generation, and prompt tokenization.

    model, tokenizer, processor = load_folder(path, "CLIPModel", "CLIP model folder", "AutoImageProcessor")
    emb = embedding(model.get_text_features(**tokenize(tokenizer, prompts, 77, "CLIP")))   # (P, D)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from mmflow.metrics.features.weights import WrongWeights, folder_sha256, require_path
from mmflow.text.truncation import truncation_warnings

__all__ = ["embedding", "load_folder", "tokenize"]


def load_folder(path: str | os.PathLike | None, model_class: str, what: str, processor_class: str
                ) -> tuple[Any, Any, Any, str]:
    """(model, tokenizer, processor, weights sha256) from a local transformers folder, strictly offline
    (local_files_only, HF_HUB_OFFLINE=1 unless set, safetensors only); errors name the folder."""
    folder = require_path(path, what, f"save one with transformers' save_pretrained (e.g. {model_class}."
                          "from_pretrained(...).save_pretrained(folder) plus its processor) and copy it here", folder=True)
    if not (folder / "config.json").is_file():
        raise WrongWeights(f"{folder}: no config.json; not a transformers model folder ({what})")
    sha = folder_sha256(folder)  # also: MissingWeights when the folder has no .safetensors file
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    try:
        model = getattr(transformers, model_class).from_pretrained(folder, local_files_only=True, use_safetensors=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        processor = getattr(transformers, processor_class).from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WrongWeights(f"{folder}: cannot load it as a {model_class} with its tokenizer and "
                           f"{processor_class.removeprefix('Auto')}: {e}") from e
    return model.eval(), tokenizer, processor, sha


def embedding(out: Any) -> Tensor:
    """The projected (B, D) embedding of get_*_features: a tensor in transformers 4, an output object's
    pooler_output in transformers 5."""
    return out if isinstance(out, Tensor) else out.pooler_output


def tokenize(tokenizer: Any, prompts: Sequence[str], max_length: int, who: str) -> dict[str, Tensor]:
    """input_ids / attention_mask (P, S) padded, truncated to max_length with a warning per prompt cut."""
    counts = [len(ids) for ids in tokenizer(list(prompts))["input_ids"]]
    for message in truncation_warnings(prompts, counts, max_length, who, "its max_position_embeddings"):
        warnings.warn(message, stacklevel=3)
    batch = tokenizer(list(prompts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
