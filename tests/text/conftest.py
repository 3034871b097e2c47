"""Tiny random text encoders (BERT, T5, CLIP) with tokenizers, saved as local model folders.

Each folder is what a real checkpoint folder holds: config.json, model.safetensors and tokenizer
files, made with save_pretrained; tokenizers are word-level over a small vocabulary, built with
HF's `tokenizers` library (BERT: a WordPiece vocab.txt). Nothing is downloaded.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

WORDS = ["a", "an", "the", "smiling", "happy", "sad", "face", "drum", "loop", "cat", "dog", "red", "blue", "on", "in",
         "of", "with", "and"]
HIDDEN = 32
MAX_POSITIONS = 24


def save_bert(folder: Path, seed: int = 0, words: list[str] = WORDS) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    folder.mkdir(parents=True, exist_ok=True)
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=MAX_POSITIONS)
    BertModel(cfg).save_pretrained(folder)
    return folder


def _word_level(folder: Path, specials: dict[str, int], template: str, **tokens: str) -> None:
    from transformers import PreTrainedTokenizerFast

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {**specials, **{w: i + len(specials) for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=tokens["unk_token"]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=list(specials.items()))
    PreTrainedTokenizerFast(tokenizer_object=tok, **tokens).save_pretrained(folder)


def save_t5(folder: Path, seed: int = 0) -> Path:
    from transformers import T5Config, T5EncoderModel

    folder.mkdir(parents=True, exist_ok=True)
    # T5 appends </s> to every prompt, so "" encodes to one real token
    _word_level(folder, {"<pad>": 0, "</s>": 1, "<unk>": 2}, "$A </s>", pad_token="<pad>", eos_token="</s>",
                unk_token="<unk>")
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=len(WORDS) + 3, d_model=HIDDEN, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                   decoder_start_token_id=0)
    T5EncoderModel(cfg).save_pretrained(folder)
    return folder


def save_clip(folder: Path, seed: int = 0, projection: bool = True) -> Path:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder.mkdir(parents=True, exist_ok=True)
    # CLIP pads with its end-of-text token and pools the first one (eos_token_id in the config)
    _word_level(folder, {"<|startoftext|>": 0, "<|endoftext|>": 1}, "<|startoftext|> $A <|endoftext|>",
                pad_token="<|endoftext|>", bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                unk_token="<|endoftext|>")
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=len(WORDS) + 2, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=MAX_POSITIONS, projection_dim=24,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1)
    (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """{"bert", "t5", "clip" (with projection), "clip_plain" (CLIPTextModel)}: model folders, made once."""
    root = tmp_path_factory.mktemp("tiny_text_encoders")
    return {"bert": save_bert(root / "bert"), "t5": save_t5(root / "t5"), "clip": save_clip(root / "clip"),
            "clip_plain": save_clip(root / "clip_plain", projection=False)}


@pytest.fixture
def builders() -> dict[str, Callable[..., Path]]:
    """{"bert", "t5", "clip"}: functions (folder, seed=0) that (re)write a tiny model folder."""
    return {"bert": save_bert, "t5": save_t5, "clip": save_clip}


@pytest.fixture
def copy_model(tmp_path) -> Callable[[Path, str], Path]:
    """copy_model(folder, name) -> a private copy under tmp_path, to change files without touching the shared one."""

    def copy(folder: Path, name: str) -> Path:
        return Path(shutil.copytree(folder, tmp_path / name))

    return copy
