"""recipes/tones_t2m_lora_concept.yaml shortened, through the CLI: a LoRA adapter on the shipped tones_t2m for
the organ concept set (two steps, batch 4, a validation with the tones probe on held-out organ prompts), saved as
the adapter only, then sampled from the base with --lora into a WAV. Only step counts and data are shrunk: the
model is the shipped one, as the recipe's train.init_from names it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf

from mmflow.cli import main
from mmflow.data.tones_concept import TonesConceptConfig, write_tones_concept_folder
from tests.conftest import REPO
from tests.recipes.shortened import train_concept_adapter
from tests.toy_recipes import reset_accelerate

RECIPE = REPO / "recipes" / "tones_t2m_lora_concept.yaml"
BASE = REPO / "checkpoints" / "tones_t2m"


def test_audio_concept_recipe_trains_an_adapter_only_and_samples_with_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = TonesConceptConfig(n_concept=4, n_test=4, n_prior=2)
    data = write_tones_concept_folder(tmp_path / "train", cfg)
    test = write_tones_concept_folder(tmp_path / "test", cfg, "test")
    run = tmp_path / "run"
    monkeypatch.chdir(REPO)  # the recipe names the shipped model and tokenizer from the repository root
    train_concept_adapter(RECIPE, BASE, data, test, run, "tones", "timbre", capsys)

    samples = tmp_path / "samples"
    prompt = "an organ arpeggio in C major at 100 bpm"
    assert main(["sample", str(BASE), "--lora", f"{run}:0.8", "--prompt", prompt, "--out", str(samples),
                 "--seconds", "2", "num_samples=1", "steps=2"]) == 0
    index = json.loads((samples / "samples.json").read_text())
    assert len(index["samples"]) == 1 and prompt in json.dumps(index)
    wav = sorted(samples.glob("*.wav"))
    assert len(wav) == 1 and sf.info(str(wav[0])).samplerate == 16000 and sf.info(str(wav[0])).channels == 1
    assert abs(sf.info(str(wav[0])).duration - 2.0) < 0.05


def test_a_lora_through_a_decoder_fine_tune_samples_through_that_decoder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The audio workflow for a sound the shipped decoder renders badly: fine-tune the tokenizer's decoder alone
    (its latents stay the base's), then a LoRA through it; the export bundles that decoder and sampling uses it.
    A tokenizer that encodes otherwise is refused before any work."""
    from mmflow.pipeline import FlowPipeline
    from mmflow.tasks.encoders import folder_fingerprint

    cfg = TonesConceptConfig(n_concept=6, n_test=4, n_prior=2)
    data = write_tones_concept_folder(tmp_path / "train", cfg)
    test = write_tones_concept_folder(tmp_path / "test", cfg, "test")
    monkeypatch.chdir(REPO)
    decoder = tmp_path / "decoder"
    assert main(["train", "tokenizers/audio.yaml", "--run-dir", str(decoder), f"data.path={data}",
                 "data.held_out=2", "data.val_examples=1", "model.freeze_encoder=true",
                 "train.init_from=checkpoints/tokenizers/audio", "train.max_steps=2", "train.batch_size=2",
                 "train.warmup_steps=0", "train.checkpoint_every=2", "train.log_every=1"]) == 0
    tuned = decoder / "model" / "models" / "tokenizer"
    reset_accelerate()  # the tokenizer run's precision (none) is not the LoRA recipe's (bf16)
    overrides = [f"model.tokenizer={tuned}", f"data.path={data}", f"data.cache={tmp_path / 'cache'}",
                 f"eval.real={test}", "train.batch_size=4", "train.max_steps=2", "train.warmup_steps=0",
                 "train.checkpoint_every=2", "train.validate_every=0", "train.log_every=1", "sample.steps=2"]
    run = tmp_path / "run"
    assert main(["train", str(RECIPE), "--run-dir", str(run), *overrides]) == 0, capsys.readouterr()
    bundled = run / "model" / "models" / "tokenizer"
    assert folder_fingerprint(bundled) == folder_fingerprint(tuned)
    assert folder_fingerprint(bundled) != folder_fingerprint(REPO / "checkpoints" / "tokenizers" / "audio")
    pipe = FlowPipeline.from_pretrained(run)
    assert Path(pipe.task.encoders.tokenizer_path) == bundled and pipe.adapters
    assert pipe.fingerprint != FlowPipeline.from_pretrained(BASE).fingerprint
    on_base = FlowPipeline.from_pretrained(BASE)  # `mmflow sample BASE --lora RUN` and `mmflow lora merge` alike
    on_base.load_lora(run)
    assert Path(on_base.task.encoders.tokenizer_path) == bundled
    merged = on_base.save_pretrained(tmp_path / "merged")
    assert folder_fingerprint(merged / "models" / "tokenizer") == folder_fingerprint(tuned)

    other = tmp_path / "other_tokenizer"  # the same weights with other latent statistics: other latents
    other.mkdir()
    (other / "model.safetensors").write_bytes((tuned / "model.safetensors").read_bytes())
    config = json.loads((tuned / "config.json").read_text())
    config["config"]["latent_scale"] = [2.0 * v for v in config["config"]["latent_scale"]]
    (other / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["train", str(RECIPE), "--run-dir", str(tmp_path / "refused"), *overrides,
                 f"model.tokenizer={other}"]) != 0
    err = capsys.readouterr().err
    assert "model.tokenizer" in err and "latent_scale differs" in err, err
    assert not (tmp_path / "refused" / "checkpoints").exists()


def test_same_latents_means_the_same_encoder_to_float16_rounding(tmp_path: Path) -> None:
    """check_same_latents: the shipped float16 tokenizer and a float32 copy of it are one encoder; a changed
    encoder weight or another latent width is not (only a decoder may differ)."""
    import torch

    import mmflow.builtin_models  # noqa: F401
    from mmflow.config import ConfigError
    from mmflow.model_io import load_model, save_model
    from mmflow.train.lora_training import check_same_latents

    shipped = REPO / "checkpoints" / "tokenizers" / "audio"
    vae = load_model(shipped)
    save_model(vae, tmp_path / "fp32")
    with torch.no_grad():
        next(vae.decoder.parameters()).add_(0.5)  # the decoder may differ
    save_model(vae, tmp_path / "decoder")
    check_same_latents(tmp_path / "fp32", shipped)
    check_same_latents(tmp_path / "decoder", shipped)
    with torch.no_grad():
        next(vae.encoder_modules()[0].parameters()).add_(0.01)
    save_model(vae, tmp_path / "encoder")
    with pytest.raises(ConfigError, match="its encoder differs") as info:
        check_same_latents(tmp_path / "encoder", shipped)
    assert info.value.key == "model.tokenizer"
