"""Tests for mmflow/interop/diffusers_sd3_pipeline.py: a whole StableDiffusion3Pipeline folder -> an mmflow
pipeline that samples what diffusers samples (text encoders, CFG with the empty prompt, shifted scheduler)."""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from mmflow.cli import main  # noqa: E402
from mmflow.interop.diffusers_sd3_pipeline import read_sd3_pipeline, sample_config_from_scheduler  # noqa: E402
from mmflow.pipeline import FlowPipeline  # noqa: E402
from mmflow.sampling.generate import generate  # noqa: E402

SHIFT, SCALING, SHIFT_FACTOR = 3.0, 1.5305, 0.0609  # SD3's scheduler shift and VAE latent statistics
T5_WIDTH = 48  # = the transformer's joint_attention_dim; the CLIPs' 16 + 24 channels are zero-padded to it
PROMPTS = ["a red fox in the snow", "a blue cat"]


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


def _sd3_pipeline(folder: Path) -> Path:
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


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, Path]:
    """(diffusers pipeline folder, its conversion by `mmflow convert diffusers-sd3-pipeline`), made once."""
    root = tmp_path_factory.mktemp("sd3_pipeline")
    src = _sd3_pipeline(root)
    assert main(["convert", "diffusers-sd3-pipeline", str(src), str(root / "mm")]) == 0
    return src, root / "mm"


def _diffusers(src: Path, x0: torch.Tensor, prompts: list[str], negative: str | None, output_type: str) -> torch.Tensor:
    pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(src, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        return pipe(prompts, negative_prompt=negative, num_inference_steps=3, guidance_scale=5.0, latents=x0.clone(),
                    height=16, width=16, output_type=output_type).images


@pytest.mark.parametrize("negative", [None, "a blurry dog"])
def test_converted_pipeline_samples_what_diffusers_samples(converted, negative: str | None) -> None:
    src, dst = converted
    pipe = FlowPipeline.from_pretrained(dst)
    cfg = pipe.sample_config(guidance=5.0, steps=3, seed=7)
    assert (cfg.solver, cfg.grid, cfg.shift) == ("euler", "sd3", SHIFT)
    x0 = torch.stack([torch.randn(16, 8, 8, generator=torch.Generator().manual_seed(cfg.seed + i))
                      for i in range(len(PROMPTS))])  # the noise FlowPipeline draws: row i from seed + i

    # the latents: FlowPipeline's own condition, null condition and sampler, before decoding
    with torch.no_grad():
        cond = pipe.task.input_condition(pipe.velocity, PROMPTS, pipe.device)
        null = pipe._null(negative)
        latents = generate(pipe.velocity, x0, cond, null, cfg, pipe.path).x
    ref = _diffusers(src, x0, PROMPTS, negative, "latent")
    err = (latents - ref).abs().max().item()
    print(f"latents: max |mmflow - diffusers| = {err:.2e} (scale {ref.abs().max():.2f})")
    assert err < 1e-4

    # the images: the whole FlowPipeline call against diffusers' decode ((z / scaling) + shift through the VAE)
    out = pipe(PROMPTS, seed=7, guidance=5.0, steps=3, negative_prompt=negative)
    image = _diffusers(src, x0, PROMPTS, negative, "pt") * 2 - 1  # diffusers' [0, 1] -> [-1, 1]
    err = (out.media - image).abs().max().item()
    print(f"images: max |mmflow - diffusers| = {err:.2e}")
    assert out.media.shape == (2, 3, 16, 16) and err < 1e-4


def test_converted_folder_is_self_contained_and_samples_from_the_command_line(converted, tmp_path, capsys) -> None:
    src, dst = converted
    moved = Path(shutil.copytree(dst, tmp_path / "moved"))  # the diffusers folder is not needed any more
    info = json.loads((moved / "pipeline.json").read_text())
    assert sorted(info["components"]["text_encoders"]) == ["clip_g", "clip_l", "t5"]
    assert all(r["mode"] == "copy" for r in info["components"]["text_encoders"].values())
    text = info["recipe"]["model"]["text"]
    lengths = [(e["name"], e["max_length"], e["attention_mask"]) for e in text["encoders"]]
    assert lengths == [("clip_l", 77, False), ("clip_g", 77, False), ("t5", 256, False)]
    assert main(["sample", str(moved), "--prompt", "a red cat", "--out", str(tmp_path / "samples"), "steps=2"]) == 0
    assert (tmp_path / "samples" / "sample_0000.png").is_file()
    again = FlowPipeline.from_pretrained(moved).save_pretrained(tmp_path / "again")  # what `mmflow export` does
    x = FlowPipeline.from_pretrained(again)(["a red cat"], steps=2).media
    torch.testing.assert_close(x, FlowPipeline.from_pretrained(moved)(["a red cat"], steps=2).media, rtol=0, atol=0)
    assert main(["convert", "diffusers-sd3-pipeline", str(src), str(moved)]) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err


def test_bad_pipeline_folders_are_named(converted, tmp_path, capsys) -> None:
    src, _ = converted
    assert main(["convert", "diffusers-sd3-pipeline", str(src / "transformer"), str(tmp_path / "a")]) == 2
    assert "no model_index.json" in capsys.readouterr().err

    partial = Path(shutil.copytree(src, tmp_path / "partial"))
    shutil.rmtree(partial / "text_encoder_3")
    index = json.loads((partial / "model_index.json").read_text())
    (partial / "model_index.json").write_text(json.dumps({**index, "tokenizer_2": [None, None]}))
    assert main(["convert", "diffusers-sd3-pipeline", str(partial), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "tokenizer_2 (tokenizer: null in model_index.json)" in err
    assert "text_encoder_3/ (the folder is missing)" in err
    assert not (tmp_path / "b").exists()

    misfit = Path(shutil.copytree(src, tmp_path / "misfit"))  # widths checked before any weights are read
    config = json.loads((misfit / "transformer" / "config.json").read_text())
    (misfit / "transformer" / "config.json").write_text(json.dumps({**config, "joint_attention_dim": 40}))
    assert main(["convert", "diffusers-sd3-pipeline", str(misfit), str(tmp_path / "c")]) == 2
    assert "text_encoder_3 d_model 48 != transformer joint_attention_dim 40" in capsys.readouterr().err

    (partial / "model_index.json").write_text(json.dumps({**index, "_class_name": "FluxPipeline"}))
    with pytest.raises(ValueError, match="_class_name 'FluxPipeline', expected 'StableDiffusion3Pipeline'"):
        read_sd3_pipeline(partial)


def test_scheduler_settings_the_sd3_grid_cannot_express_are_refused() -> None:
    cfg = sample_config_from_scheduler({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0})
    assert (cfg.solver, cfg.grid, cfg.shift, cfg.steps, cfg.guidance) == ("euler", "sd3", 3.0, 28, 7.0)
    with pytest.raises(ValueError, match=r"use_dynamic_shifting=True \(supported: False\)"):
        sample_config_from_scheduler({"shift": 3.0, "use_dynamic_shifting": True})
    with pytest.raises(ValueError, match=r"unknown FlowMatchEulerDiscreteScheduler config keys \['sigma_max'\]"):
        sample_config_from_scheduler({"sigma_max": 1.0})
