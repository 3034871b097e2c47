"""The tokenizer task: short image / video / audio trainings from the tokenizers/ recipes on generated
media, the discriminator's start step, the held-out split, latent statistics in the export, bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from media_factory import (  # noqa: E402
    noisy_frames, pattern_rgb, sine, write_audio, write_image, write_mp4, write_zero_byte,
)

from mmflow.cli import main  # noqa: E402
from mmflow.config import ConfigError, to_dict  # noqa: E402
from mmflow.data.media_folder import collate  # noqa: E402
from mmflow.metrics.reconstruction import hue_error, psnr  # noqa: E402
from mmflow.model_io import load_model  # noqa: E402
from mmflow.tasks import load_recipe  # noqa: E402
from mmflow.tasks.tokenizer import (  # noqa: E402
    DISCRIMINATOR, GENERATOR, RECONSTRUCTION, TOKENIZER, TokenizerTask,
)
from mmflow.train import checkpoint as ckpt  # noqa: E402
from mmflow.train.random import BatchRandom  # noqa: E402
from mmflow.train.trainer import Trainer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "tokenizers"
# 16x16 images, the 2x "test" VAE; the folder has 20 images, 4 held out
IMAGE = ["model.preset=test", "model.vae={}", "data.size=16", "data.held_out=4", "data.stats_items=64",
         "data.val_examples=4", "model.discriminator.base_channels=8", "model.discriminator.n_layers=1",
         "train.batch_size=8", "train.max_steps=30", "train.warmup_steps=2", "train.lr=3e-3", "train.log_every=5",
         "train.checkpoint_every=30", "train.trackers=[]"]


def _images(root: Path, n: int = 20, size: int = 16) -> Path:
    for i in range(n):
        write_image(root / f"img_{i:03d}.png", pattern_rgb(size, size, seed=i)[:, :: 1 if i % 2 else -1])
    return root


def _recipe(name: str, data: Path, *overrides: str):
    return load_recipe(RECIPES / f"{name}.yaml", [f"data.path={data}", *overrides])


def _train(recipe, run_dir: Path):
    return Trainer(recipe, TokenizerTask(recipe), run_dir).train()


def test_image_training_lowers_loss_and_exports_normalising_latent_stats(tmp_path):
    data = _images(tmp_path / "data")
    recipe = _recipe("image_f8", data, *IMAGE)
    result = _train(recipe, tmp_path / "run")
    losses = [loss for _, loss in result.loss_history]
    assert losses[-1] < 0.6 * losses[0], losses
    # the export carries the statistics; encode_latents of a reloaded tokenizer normalises the training items
    folder = tmp_path / "run" / "model" / "models" / TOKENIZER
    cfg = json.loads((folder / "config.json").read_text())["config"]
    assert len(cfg["latent_shift"]) == len(cfg["latent_scale"]) == 4
    vae = load_model(folder).eval()
    task = TokenizerTask(recipe)
    train = task.build_dataset()
    x = collate([train[i] for i in range(len(train))])["media"]  # all 16 training items (stats_items >= 16)
    with torch.no_grad():
        z = vae.encode_latents(x)  # (16, 4, 8, 8)
    mean, std = z.mean(dim=(0, 2, 3)), z.std(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(mean, torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(std, torch.ones(4), atol=1e-4, rtol=0)
    # validation reconstructs the 4 held-out images (never trained on), better than a flat grey guess
    metrics = result.metrics
    assert metrics["held_out_items"] == 4
    held = task.held_out_media()
    assert metrics["psnr"] > float(psnr(torch.zeros_like(held), held).mean()) + 3.0, metrics
    with torch.no_grad():
        x_hat = task.reconstruct_mean(vae, held, torch.device("cpu"))
    again = psnr(x_hat, held)  # the saved weights give it again
    assert abs(float(again.mean()) - metrics["psnr"]) < 1e-3
    assert 0 <= metrics["hue_error"] < 180 and abs(hue_error(held, x_hat) - metrics["hue_error"]) < 1e-3, metrics
    assert (tmp_path / "run" / "validation" / ckpt.step_dir_name(30) / "reconstructions.png").stat().st_size > 500


@pytest.mark.parametrize("source", ["run", "model folder"])
def test_a_decoder_only_fine_tune_keeps_the_encoder_and_its_latents(tmp_path, source):
    """From a run, or from the tokenizer's own folder (config.json + weights, as checkpoints/tokenizers/*)."""
    data = _images(tmp_path / "data")
    _train(_recipe("image_f8", data, *IMAGE, "train.max_steps=6", "train.checkpoint_every=6"), tmp_path / "base")
    base = tmp_path / "base" / "model" / "models" / TOKENIZER
    start = tmp_path / "base" if source == "run" else base
    recipe = _recipe("image_f8", data, *IMAGE, "train.max_steps=6", "train.checkpoint_every=6",
                     "model.freeze_encoder=true", f"train.init_from={start}", "data.stats_items=4")
    _train(recipe, tmp_path / "ft")
    before, after = load_file(base / "model.safetensors"), load_file(tmp_path / "ft" / "model" / "models" / TOKENIZER /
                                                                     "model.safetensors")
    encoder = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    # the latent statistics are the base's (not re-measured on other items): cached latents stay valid
    old, new = load_model(base).eval(), load_model(tmp_path / "ft" / "model" / "models" / TOKENIZER).eval()
    assert (new.config.latent_shift, new.config.latent_scale) == (old.config.latent_shift, old.config.latent_scale)
    x = TokenizerTask(recipe).held_out_media()
    with torch.no_grad():
        torch.testing.assert_close(new.encode_latents(x), old.encode_latents(x), rtol=0, atol=0)


def test_held_out_items_are_never_trained_on_even_as_replacements(tmp_path):
    data = _images(tmp_path / "data", n=10)
    write_zero_byte(data / "img_005.png")  # the last training item: its replacement search reaches held-out items
    recipe = _recipe("image_f8", data, *IMAGE, "data.held_out=4")
    task = TokenizerTask(recipe)
    train = task.build_dataset()
    assert len(train) == 6 and len(task.folder()) == 10
    assert [p.name for p in (e.path for e in task.folder().entries)][6:] == [f"img_{i:03d}.png" for i in range(6, 10)]
    delivered = [train[i] for i in range(len(train))]
    assert all(it["index"] < 6 for it in delivered)
    assert delivered[5]["index"] != 5 and delivered[5]["requested"] == 5
    assert any("img_005.png" in path for path, _ in delivered[5]["bad"])
    assert task.folder()[5]["index"] == 6  # without the guard the folder itself would hand out a held-out item
    assert task.held_out_media().shape == (4, 3, 16, 16)
    with pytest.raises(ConfigError, match="data.held_out.*10"):
        TokenizerTask(_recipe("image_f8", data, *IMAGE, "data.held_out=10")).build_dataset()


def test_discriminator_waits_for_its_start_step_then_learns(tmp_path):
    data = _images(tmp_path / "data", n=12)
    recipe = _recipe("image_f8", data, *IMAGE, "model.loss.adv_weight=0.5", "model.loss.adv_start_step=3",
                     "train.max_steps=5", "train.checkpoint_every=3", "train.keep_checkpoints=2")
    task = TokenizerTask(recipe)
    set_seed(recipe.seed)  # the trainer builds its models right after the same call
    initial = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in task.build_models().items()}
    assert task.optimizer_groups(initial) == {GENERATOR: [TOKENIZER], DISCRIMINATOR: [DISCRIMINATOR]}
    assert [task.optimizer_active(DISCRIMINATOR, s) for s in range(5)] == [False, False, False, True, True]
    _train(recipe, tmp_path / "run")

    def weights(step: int, name: str) -> dict[str, torch.Tensor]:
        folder = tmp_path / "run" / "checkpoints" / ckpt.step_dir_name(step) / "models" / name
        return load_file(str(folder / "model.safetensors"))

    for k, v in weights(3, DISCRIMINATOR).items():
        torch.testing.assert_close(v, initial[DISCRIMINATOR][k], atol=0, rtol=0, msg=k)  # steps 0-2: untouched
    assert any(not torch.equal(v, initial[DISCRIMINATOR][k]) for k, v in weights(5, DISCRIMINATOR).items())
    assert any(not torch.equal(v, initial[TOKENIZER][k]) for k, v in weights(3, TOKENIZER).items())


def test_adversarial_term_from_the_start_step_and_the_discriminator_reuses_the_reconstruction(tmp_path):
    data = _images(tmp_path / "data", n=8)
    task = TokenizerTask(_recipe("image_f8", data, *IMAGE, "model.loss.adv_weight=0.5", "model.loss.adv_start_step=2"))
    models = task.build_models()
    batch = collate([task.build_dataset()[i] for i in range(2)])
    calls = []
    original = task.reconstruct
    task.reconstruct = lambda *a: calls.append(1) or original(*a)  # count encode/decode passes

    def rng(group: int, step: int) -> BatchRandom:
        return BatchRandom(0, step, group, 0, 2, 1)

    before = task.loss(models, batch, rng(0, 1), GENERATOR, 1)
    assert "g_loss" not in before.logs
    after = task.loss(models, batch, rng(0, 2), GENERATOR, 2)
    assert "g_loss" in after.logs and after.logs["adv_weight"] > 0
    after.loss.backward()
    assert all(p.grad is None for p in models[DISCRIMINATOR].parameters())  # G's step leaves D's gradients alone
    assert any(p.grad is not None for p in models[TOKENIZER].parameters())
    assert set(after.extras) == {RECONSTRUCTION} and not after.extras[RECONSTRUCTION].requires_grad
    d = task.loss(models, batch, rng(1, 2), DISCRIMINATOR, 2, carry=after.extras)
    assert len(calls) == 2 and d.loss.requires_grad and "d_loss" in d.logs  # reused step 2's reconstruction
    task.loss(models, collate([task.build_dataset()[i] for i in range(2, 4)]), rng(1, 2), DISCRIMINATOR, 2)
    assert len(calls) == 3  # no hand-off (a batch the generator did not see): reconstructed again
    with pytest.raises(ValueError, match="not of this micro-batch"):
        task.loss(models, collate([task.build_dataset()[0]]), rng(1, 2), DISCRIMINATOR, 2, carry=after.extras)
    # same rng key -> same posterior noise -> same reconstruction; another step's key -> different
    with torch.no_grad():
        a, _ = original(models[TOKENIZER], batch["media"], rng(0, 7))
        b, _ = original(models[TOKENIZER], batch["media"], rng(0, 7))
        c, _ = original(models[TOKENIZER], batch["media"], rng(0, 8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_training_crops_are_windows_of_the_items_fresh_each_epoch(tmp_path):
    data = _images(tmp_path / "data", size=32)
    task = TokenizerTask(_recipe("image_f8", data, *IMAGE, "data.size=32", "data.train_crop=16"))
    items = task.build_dataset()
    whole = items.whole()
    positions = set()
    for i in range(4):
        for epoch in range(3):
            crop, full = items[(i, epoch)]["media"], whole[(i, epoch)]["media"]
            assert crop.shape == (3, 16, 16) and full.shape == (3, 32, 32)
            assert torch.equal(crop, items[(i, epoch)]["media"])  # a function of (seed, index, epoch)
            windows = full.unfold(1, 16, 1).unfold(2, 16, 1)  # (3, 17, 17, 16, 16): every 16x16 window
            hits = (windows == crop[:, None, None]).flatten(3).all(3).all(0).nonzero().tolist()
            assert len(hits) == 1, hits
            positions.add((i, *hits[0]))
    assert len(positions) > 6  # crops move between items and epochs
    assert task.held_out_media().shape[-2:] == (32, 32)  # validation sees whole items


def test_colour_permutation_reorders_rgb_per_item_and_epoch(tmp_path):
    data = _images(tmp_path / "data")
    items = TokenizerTask(_recipe("image_f8", data, *IMAGE, "data.train_colour_permute=1.0")).build_dataset()
    orders = set()
    for i in range(4):
        for epoch in range(3):
            got, own = items[(i, epoch)]["media"], items.whole()[(i, epoch)]["media"]
            assert torch.equal(got, items[(i, epoch)]["media"])  # a function of (seed, index, epoch)
            order = tuple(next(j for j in range(3) if torch.equal(got[c], own[j])) for c in range(3))
            assert sorted(order) == [0, 1, 2] and order != (0, 1, 2), order  # p = 1: never the item's own order
            orders.add(order)
    assert len(orders) >= 4  # the other orders are all drawn
    kept = TokenizerTask(_recipe("image_f8", data, *IMAGE)).build_dataset()  # the default: items as they are
    assert torch.equal(kept[(1, 0)]["media"], items.whole()[(1, 0)]["media"])


def test_video_training_on_crops_with_a_3d_discriminator(tmp_path):
    for i in range(6):
        write_mp4(tmp_path / "data" / f"clip_{i}.mp4", noisy_frames(6, 32, 32, seed=i), fps=8)
    recipe = _recipe("video", tmp_path / "data", "model.preset=test", "model.vae={}", "data.size=32", "data.frames=5",
                     "data.train_crop=16",
                     "data.held_out=2", "data.stats_items=8", "data.val_examples=2", "model.loss.adv_weight=0.1",
                     "model.loss.adv_start_step=2", "model.discriminator.base_channels=8",
                     "model.discriminator.n_layers=1", "train.batch_size=2", "train.max_steps=4",
                     "train.warmup_steps=1", "train.log_every=2", "train.checkpoint_every=4", "train.trackers=[]")
    crop = TokenizerTask(recipe).build_dataset()[0]["media"]
    assert crop.shape == (3, 5, 16, 16)  # every frame cut at the same place
    result = _train(recipe, tmp_path / "run")
    assert np.isfinite(result.final_loss) and 0 < result.metrics["psnr"] < 60
    cfg = json.loads((tmp_path / "run" / "model" / "models" / TOKENIZER / "config.json").read_text())["config"]
    assert len(cfg["latent_scale"]) == 4
    assert load_model(tmp_path / "run" / "model" / "models" / DISCRIMINATOR).config.dims == 3
    assert (tmp_path / "run" / "validation" / ckpt.step_dir_name(4) / "reconstructions.png").exists()


def test_audio_recipe_trains_from_the_command_line(tmp_path, capsys):
    for i in range(8):
        write_audio(tmp_path / "data" / f"tone_{i}.wav", sine(0.25, 8000, freq=200 + 60 * i), 8000)
    run = tmp_path / "run"
    code = main(["train", str(RECIPES / "audio.yaml"), f"data.path={tmp_path / 'data'}", "data.sample_rate=8000",
                 "data.seconds=0.25", "data.held_out=2", "data.stats_items=8", "data.val_examples=2",
                 "model.preset=test", "model.vae={}", "model.loss.stft_fft_sizes=[128,64,32]",
                 "model.loss.mel_n_fft=128",
                 "model.loss.mel_hop_length=32", "model.loss.mel_bins=16", "train.batch_size=6", "train.max_steps=20",
                 "train.warmup_steps=1", "train.log_every=5", "train.checkpoint_every=20", "train.trackers=[]",
                 "--run-dir", str(run)])
    assert code == 0, capsys.readouterr().err
    log = (run / "train.log").read_text()
    losses = [float(line.split(" loss ")[1].split()[0]) for line in log.splitlines()
              if " loss " in line and "step" in line]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 < metrics["stft_distance"] and metrics["stft_distance_silence"] > 0 and metrics["stft_distance_noise"] > 0
    val = run / "validation" / ckpt.step_dir_name(20)
    wave, rate = sf.read(str(val / "reconstruction_1.wav"))
    assert rate == 8000 and wave.shape == (2000,)
    original, _ = sf.read(str(val / "original_1.wav"))
    assert np.corrcoef(original, sine(0.25, 8000, freq=200 + 60 * 7)[:, 0])[0, 1] > 0.99  # held out: the last file
    cfg = json.loads((run / "model" / "models" / TOKENIZER / "config.json").read_text())["config"]
    assert cfg["sample_rate"] == 8000 and len(cfg["latent_shift"]) == 8


@pytest.mark.parametrize("recipe, overrides, key", [
    ("image_f8", ["data.size=36"], "data.size"),  # f8
    ("image_f8", ["model.vae.latent_chanels=4"], "model.vae.latent_chanels"),
    ("image_f8", ["model.preset=huge"], "model.preset"),
    ("image_f8", ["model.loss.stft_weight=1.0"], "model.loss.stft_weight"),
    ("image_f8", ["data.bucketing=true"], "data.bucketing"),
    ("image_f8", ["model.loss.adv_weight=0.5", "model.discriminator.n_layers=5"], "model.discriminator.n_layers"),
    ("video", ["data.frames=8"], "data.frames"),
    ("image_f8", ["data.train_crop=36"], "data.train_crop"),  # not a multiple of 8
    ("image_f8", ["data.train_crop=128"], "data.train_crop"),  # larger than the items
    ("image_f8", ["data.train_crop=8", "model.loss.adv_weight=0.5"], "model.discriminator.n_layers"),  # 2 need 12
    ("audio", ["data.train_crop=16"], "data.train_crop"),
    ("audio", ["data.train_colour_permute=0.5"], "data.train_colour_permute"),
    ("audio", ["model.loss.chroma_weight=1.0"], "model.loss.chroma_weight"),
    ("image_f8", ["data.train_colour_permute=1.5"], "data.train_colour_permute"),  # a probability
    ("audio", ["model.loss.adv_weight=0.5"], "model.loss.adv_weight"),
    ("audio", ["model.vae.sample_rate=24000"], "model.vae.sample_rate"),
    ("image_f8", ["model.vae.gradient_checkpointing=true"], "model.vae.gradient_checkpointing"),  # moved out
    ("video", ["model.gradient_checkpointing=true"], "model.gradient_checkpointing"),  # image VAE only
    ("image_f8", ["model.freeze_encoder=true"], "model.freeze_encoder"),  # no train.init_from to keep
])
def test_bad_recipes_name_the_key(recipe, overrides, key):
    with pytest.raises(ConfigError) as e:
        load_recipe(RECIPES / f"{recipe}.yaml", overrides)
    assert e.value.key == key, str(e.value)


def test_every_shipped_recipe_validates_and_builds(tmp_path):
    for name in ("image_f4", "image_f8", "video", "audio"):
        recipe = load_recipe(RECIPES / f"{name}.yaml")
        assert recipe.task == "tokenizer" and recipe.train.ema_decay is None
        models = TokenizerTask(recipe).build_models()
        assert set(models) == {TOKENIZER}
    # activation checkpointing is a recipe setting the task applies, not saved in the VAE's config
    vae = TokenizerTask(load_recipe(RECIPES / "image_f4.yaml", ["model.gradient_checkpointing=true"])).build_models()[TOKENIZER]
    assert vae.gradient_checkpointing and "gradient_checkpointing" not in to_dict(vae.config)
    with pytest.raises(FileNotFoundError, match="data.path"):
        TokenizerTask(_recipe("image_f8", tmp_path / "missing")).build_dataset()
