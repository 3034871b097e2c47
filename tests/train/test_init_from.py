"""train.init_from: a fresh run starts from another run's (EMA) weights; resume ignores it; mismatches are named."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmflow.config import ConfigError
from mmflow.model_io import load_model, save_model
from mmflow.models import MMDiT, MMDiTConfig
from mmflow.tasks.toy2d import Toy2DTask
from mmflow.train.init_from import init_from
from mmflow.train.trainer import Trainer


def _train(recipe, run_dir: Path):
    return Trainer(recipe, Toy2DTask(recipe), run_dir).train()


def test_a_fresh_run_starts_from_the_source_ema_weights(tmp_path, make_toy_recipe) -> None:
    src = tmp_path / "src"
    _train(make_toy_recipe("train.max_steps=6", "train.checkpoint_every=6", "sample.num_samples=64"), src)
    ema = load_model(src / "model" / "models" / "velocity_ema")
    recipe = make_toy_recipe("train.max_steps=2", "train.checkpoint_every=2", "sample.num_samples=64",
                             f"train.init_from={src}", "train.lr=1e-12", "train.warmup_steps=0")
    _train(recipe, tmp_path / "dst")
    log = (tmp_path / "dst" / "train.log").read_text()
    assert f"initialised velocity from {src / 'model' / 'models' / 'velocity_ema'}" in log
    got = load_model(tmp_path / "dst" / "model" / "models" / "velocity")  # two steps at lr 1e-12: the start
    for (name, a), b in zip(ema.state_dict().items(), got.state_dict().values()):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0, msg=name)
    fresh = make_toy_recipe("train.max_steps=2", "train.checkpoint_every=2", "sample.num_samples=64",
                            "train.lr=1e-12", "train.warmup_steps=0")
    _train(fresh, tmp_path / "scratch")  # without init_from the run starts elsewhere
    other = load_model(tmp_path / "scratch" / "model" / "models" / "velocity")
    assert not torch.allclose(next(iter(other.state_dict().values())), next(iter(ema.state_dict().values())))


def test_an_mmdit_gaining_first_frame_channels_starts_as_the_old_model() -> None:
    base = dict(in_channels=4, patch_size=(1, 2, 2), hidden_size=32, depth=2, num_heads=2, context_dim=8)
    torch.manual_seed(0)
    old = MMDiT(MMDiTConfig(**base))
    with torch.no_grad():
        for p in old.parameters():
            p.add_(0.1 * torch.randn_like(p))  # past the zero-inits: every path is live
    new = MMDiT(MMDiTConfig(**base, concat_channels=5))
    state, changes = new.adapt_init_state(old.state_dict())
    new.load_state_dict(state)
    assert changes and "4 -> 9 input channels" in changes[0]
    x, t = torch.randn(2, 4, 3, 4, 4), torch.rand(2)
    cond = {"text": torch.randn(2, 5, 8)}
    torch.testing.assert_close(new(x, t, cond), old(x, t, cond))  # no first frame: exactly the old model


def test_a_source_that_does_not_fit_is_named(tmp_path, make_toy_recipe) -> None:
    src = tmp_path / "src"
    _train(make_toy_recipe("train.max_steps=2", "train.checkpoint_every=2", "sample.num_samples=64"), src)
    wider = make_toy_recipe("model.hidden=48", "train.max_steps=2", f"train.init_from={src}")
    task = Toy2DTask(wider)
    with pytest.raises(ConfigError, match=r"train\.init_from: .*differs from .*config\.json: hidden: 48 here, 32 there"):
        init_from(task.build_models(), src)  # the configs are compared before any weights are read
    with pytest.raises(ConfigError, match="holds no models/ folder, no model/ export and no checkpoint"):
        init_from(task.build_models(), tmp_path)


def test_weights_that_read_whitened_text_are_refused_by_a_model_without_whitening(tmp_path) -> None:
    base = dict(in_channels=4, patch_size=(2, 2), hidden_size=32, depth=2, num_heads=2, context_dim=8)
    src = save_model(MMDiT(MMDiTConfig(**base, text_whitening=True)), tmp_path / "whitened")
    with pytest.raises(ConfigError, match=r"train\.init_from: .*whitened: those weights read whitened text tokens "
                                          r"\(text_whitening: true there\)"):
        init_from({"velocity": MMDiT(MMDiTConfig(**base))}, src)


def test_a_tokenizer_with_measured_latent_statistics_initialises_a_fresh_one(tmp_path) -> None:
    """Latent statistics are measured after training, not architecture: a recipe's fresh tokenizer (None)
    starts from a finished one (measured), and its other fields are still compared."""
    from dataclasses import replace

    from mmflow.tokenizers import AudioVAE
    from mmflow.tokenizers.audio_vae import audio_vae_config

    cfg = audio_vae_config("test")
    torch.manual_seed(0)
    finished = AudioVAE(replace(cfg, latent_shift=[0.1] * cfg.latent_channels, latent_scale=[2.0] * cfg.latent_channels))
    save_model(finished, tmp_path / "src" / "models" / "tokenizer")
    fresh = AudioVAE(cfg)
    init_from({"tokenizer": fresh}, tmp_path / "src")
    for (name, a), b in zip(finished.state_dict().items(), fresh.state_dict().values()):
        torch.testing.assert_close(b, a, atol=0, rtol=0, msg=name)
    assert fresh.config.latent_shift is None  # re-measured by the run, not copied
    with pytest.raises(ConfigError, match="latent_channels: 4 here, 8 there"):
        init_from({"tokenizer": AudioVAE(replace(cfg, latent_channels=4))}, tmp_path / "src")
    # one model's own folder (config.json + weights, as checkpoints/tokenizers/*) is a source too
    again = AudioVAE(cfg)
    init_from({"tokenizer": again}, tmp_path / "src" / "models" / "tokenizer")
    torch.testing.assert_close(again.state_dict(), finished.state_dict(), atol=0, rtol=0)
    with pytest.raises(ConfigError, match="model type: 'mmdit' here, 'audio_vae' there"):
        init_from({"velocity": MMDiT(MMDiTConfig(patch_size=(2,), hidden_size=32, depth=1, num_heads=2))},
                  tmp_path / "src" / "models" / "tokenizer")


def test_a_model_of_another_modality_is_refused_naming_its_patches(tmp_path) -> None:
    """An audio MM-DiT (1-D patches) cannot start from an image one (2-D): refused before any weight is read."""
    image = MMDiT(MMDiTConfig(patch_size=(2, 2), in_channels=4, hidden_size=32, depth=1, num_heads=2))
    save_model(image, tmp_path / "src" / "models" / "velocity")
    audio = MMDiT(MMDiTConfig(patch_size=(2,), in_channels=4, hidden_size=32, depth=1, num_heads=2))
    before = {k: v.clone() for k, v in audio.state_dict().items()}
    with pytest.raises(ConfigError, match=r"train\.init_from: .*'velocity' .*patch_size: \(2,\) here, \(2, 2\) there"):
        init_from({"velocity": audio}, tmp_path / "src")
    for name, value in audio.state_dict().items():
        torch.testing.assert_close(value, before[name], atol=0, rtol=0, msg=name)
