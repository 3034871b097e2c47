"""Tests for mmflow/interop/diffusers_sd3_pipeline.py: a whole StableDiffusion3Pipeline folder -> an mmflow
pipeline that samples what diffusers samples (text encoders, CFG with the empty prompt, shifted scheduler)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from mmflow.cli import main  # noqa: E402
from mmflow.interop.diffusers_sd3_pipeline import read_sd3_pipeline, sample_config_from_scheduler  # noqa: E402
from mmflow.pipeline import FlowPipeline  # noqa: E402
from mmflow.sampling.generate import generate  # noqa: E402
from tests.interop.sd3_tiny_pipeline import SHIFT, sd3_pipeline  # noqa: E402

PROMPTS = ["a red fox in the snow", "a blue cat"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, Path]:
    """(diffusers pipeline folder, its conversion by `mmflow convert diffusers-sd3-pipeline`), made once."""
    root = tmp_path_factory.mktemp("sd3_pipeline")
    src = sd3_pipeline(root)
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
