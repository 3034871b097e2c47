"""Tiny random CLIP / CLAP model folders, saved as real ones are (save_pretrained); conftest.py makes them once.

The tokenizer is a CLIPTokenizer whose vocabulary is the 26 letters (alone and word-final) with no
merges, so every word tokenizes letter by letter; nothing is downloaded.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

MAX_TEXT = 16  # text positions of the tiny models
WIDTH = 32


def save_letter_tokenizer(folder: Path) -> int:
    """Write a letter-level CLIPTokenizer into folder; returns its vocabulary size (pad = eos = id 1)."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        vocab.update({c + suffix: len(vocab) + i for i, c in enumerate(string.ascii_lowercase)})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)
    return len(vocab)


def save_tiny_clip(folder: Path, image_size: int = 32, seed: int = 0) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    vocab = save_letter_tokenizer(folder)
    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size}).save_pretrained(folder)
    layers = dict(hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    cfg = CLIPConfig(text_config=dict(vocab_size=vocab, max_position_embeddings=MAX_TEXT, bos_token_id=0,
                                      eos_token_id=1, pad_token_id=1, **layers),
                     vision_config=dict(image_size=image_size, patch_size=8, **layers), projection_dim=16)
    torch.manual_seed(seed)
    CLIPModel(cfg).save_pretrained(folder)
    return folder


def save_tiny_clap(folder: Path, seed: int = 0) -> Path:
    """8 kHz, 1 s windows, 16 mel bins; a 2-stage HTSAT (spec_size 64 = 4 x 16 bins) and a 1-layer RoBERTa."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    vocab = save_letter_tokenizer(folder)
    ClapFeatureExtractor(feature_size=16, sampling_rate=8000, hop_length=80, max_length_s=1, fft_window_size=256,
                         frequency_min=0, frequency_max=4000, truncation="rand_trunc").save_pretrained(folder)
    audio = dict(num_mel_bins=16, spec_size=64, patch_size=4, patch_stride=(4, 4), window_size=4, depths=[1, 1],
                 num_attention_heads=[2, 2], patch_embeds_hidden_size=16, hidden_size=WIDTH, enable_fusion=False)
    text = dict(vocab_size=vocab, hidden_size=WIDTH, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=MAX_TEXT + 2, pad_token_id=1)  # RoBERTa positions start after the pad id
    torch.manual_seed(seed)
    ClapModel(ClapConfig(text_config=text, audio_config=audio, projection_dim=16)).save_pretrained(folder)
    return folder
