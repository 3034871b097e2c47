"""A tiny random diffusers StableDiffusion3Pipeline saved to a folder, for the tests of its conversion
(tests/interop/test_diffusers_sd3_pipeline.py) and of fine-tuning from it (tests/interop/test_sd3_finetune.py).
Import it after pytest.importorskip("diffusers") and ("transformers")."""

from __future__ import annotations

import json
import string
from pathlib import Path

import diffusers
import torch
import transformers

SHIFT, SCALING, SHIFT_FACTOR = 3.0, 1.5305, 0.0609  # SD3's scheduler shift and VAE latent statistics
T5_WIDTH = 48  # = the transformer's joint_attention_dim; the CLIPs' 16 + 24 channels are zero-padded to it


def _perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter moved off its init (zero-initialised output layers would hide a wrong conversion)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def _clip_tokenizer(folder: Path, pad_token: str) -> transformers.CLIPTokenizer:
    """A letter-level CLIPTokenizer (no merges) padding to 77 with pad_token (SD3: CLIP-L <|endoftext|>, CLIP-G !)."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for suffix in ("", "</w>"):
        vocab.update({c + suffix: len(vocab) + i for i, c in enumerate(string.ascii_lowercase)})
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token=pad_token,
                                      model_max_length=77)


def _clip(width: int, layers: int, seed: int) -> transformers.CLIPTextModelWithProjection:
    torch.manual_seed(seed)
    cfg = transformers.CLIPTextConfig(vocab_size=55, hidden_size=width, intermediate_size=2 * width,
                                      num_hidden_layers=layers, num_attention_heads=2, max_position_embeddings=77,
                                      projection_dim=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return transformers.CLIPTextModelWithProjection(cfg).eval()


def _t5() -> tuple[transformers.T5EncoderModel, transformers.T5Tokenizer]:
    pieces = ["▁", *string.ascii_lowercase, *(f"▁{c}" for c in string.ascii_lowercase), "▁a", "▁red", "▁cat"]
    tokenizer = transformers.T5Tokenizer(vocab=[("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
                                         + [(p, -1.0 - len(p)) for p in pieces], extra_ids=0)
    torch.manual_seed(3)
    cfg = transformers.T5Config(vocab_size=len(pieces) + 3, d_model=T5_WIDTH, d_kv=8, d_ff=64, num_layers=2,
                                num_heads=4, decoder_start_token_id=0)
    return transformers.T5EncoderModel(cfg).eval(), tokenizer


def sd3_pipeline(folder: Path) -> Path:
    """A tiny random StableDiffusion3Pipeline saved with save_pretrained: 16 latent channels, 8x8 latents of
    16x16 images, CLIP-L (16 wide) + CLIP-G (24 wide) + T5 (48 wide), the FlowMatchEuler scheduler with shift 3."""
    torch.manual_seed(0)
    transformer = _perturbed(diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=4,
        joint_attention_dim=T5_WIDTH, caption_projection_dim=32, pooled_projection_dim=32, out_channels=16,
        pos_embed_max_size=16), seed=1)
    vae = _perturbed(diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32), latent_channels=16, norm_num_groups=8, layers_per_block=1, use_quant_conv=False,
        use_post_quant_conv=False, scaling_factor=SCALING, shift_factor=SHIFT_FACTOR), seed=2)
    t5, t5_tokenizer = _t5()
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=transformer, vae=vae, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=SHIFT),
        text_encoder=_clip(16, 2, seed=4), tokenizer=_clip_tokenizer(folder / "tok_l", "<|endoftext|>"),
        text_encoder_2=_clip(24, 3, seed=5), tokenizer_2=_clip_tokenizer(folder / "tok_g", "!"),
        text_encoder_3=t5, tokenizer_3=t5_tokenizer)
    pipe.save_pretrained(folder / "sd3")
    return folder / "sd3"
