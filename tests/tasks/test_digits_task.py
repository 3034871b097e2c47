"""The digits text-to-image task: data and captions, the stand-in text embedder, the real-digit
classifier, a short training, and sampling from an exported model folder alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from mmflow.cli import main
from mmflow.config import ConfigError
from mmflow.data.digits import (CAPTION_TEMPLATES, DIGIT_NAMES, DigitsDataset, all_captions, digits_to_pixels,
                                load_digits_8x8)
from mmflow.metrics.digit_classifier import HELD_OUT, SPLIT_SEED, digit_accuracy, digit_classifier
from mmflow.text.token_text import PAD_ID, TokenTextConfig, TokenTextEmbedder, UnknownWordError, build_vocabulary
from mmflow.modalities import get_modality
from mmflow.pipeline import FlowPipeline
from mmflow.tasks import load_recipe
from mmflow.tasks.digits import TEXT, DigitsImageTask
from mmflow.tasks.flow_task import VELOCITY
from mmflow.train.trainer import Trainer

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "digits_image.yaml"
# A run that trains in ~25 s on one thread: a 64-wide, 2-block MM-DiT, 300 steps, 10 samples per digit.
TINY = ["model.hidden_size=64", "model.depth=2", "model.num_heads=4", "model.text_dim=32",
        "train.batch_size=32", "train.max_steps=300", "train.warmup_steps=10", "train.lr=2e-3",
        "train.log_every=50", "train.checkpoint_every=300", "data.eval_per_digit=10", "sample.steps=4",
        "sample.num_samples=3"]


def _recipe(*overrides: str):
    return load_recipe(RECIPE, [*TINY, *overrides])


def _embedder(dim: int = 16, max_length: int = 8) -> TokenTextEmbedder:
    torch.manual_seed(0)
    return TokenTextEmbedder(TokenTextConfig(vocab=build_vocabulary(all_captions()), dim=dim, max_length=max_length))


# ---------------------------------------------------------------------------------------------- data


@pytest.mark.parametrize("size", [16, 32])
def test_dataset_images_and_captions(size):
    emb = _embedder()
    ds = DigitsDataset(size, emb.tokenizer.encode)
    images, labels = load_digits_8x8()
    assert len(ds) == len(images) * len(CAPTION_TEMPLATES) == 1797 * len(CAPTION_TEMPLATES)
    assert ds.images.shape == (1797, 1, size, size) and ds.images.dtype == torch.float32
    assert ds.images.min() >= -1 and ds.images.max() <= 1
    assert ds.images.min() == -1 and ds.images.max() == 1  # 0 and 16 both occur in the originals
    for i in [0, 5, 1797 + 7, 3 * 1797 + 100, len(ds) - 1]:
        item = ds[i]
        d = int(item["label"])
        assert d == labels[i % 1797]
        assert item["image"].shape == (1, size, size) and item["ids"].shape == item["mask"].shape == (8,)
        words = emb.tokenizer.decode(item["ids"][None])[0].split()
        assert DIGIT_NAMES[d] in words or str(d) in words  # the caption names the image's own digit
        assert not any(w in words for k, w in enumerate(DIGIT_NAMES) if k != d)
        assert ds.caption_of(i).split() == words


def test_upsampling_then_area_downsampling_nearly_recovers_the_digits():
    images, _ = load_digits_8x8()
    original = digits_to_pixels(images, 8)  # (N, 1, 8, 8), no resampling
    for size in (16, 32):
        back = torch.nn.functional.adaptive_avg_pool2d(digits_to_pixels(images, size), 8)
        assert torch.allclose(back.mean(), original.mean(), atol=1e-4)  # bilinear + area keep the mass
        corr = torch.corrcoef(torch.stack([back.flatten(), original.flatten()]))[0, 1]
        assert corr > 0.97, corr  # bilinear blurs edges a little; the classifier test bounds the effect


def test_tokenizer_round_trip_and_padding_mask():
    tok = _embedder().tokenizer
    captions = all_captions()
    assert tok.vocab == build_vocabulary(reversed(captions))  # deterministic, whatever the order
    ids, mask = tok.encode(captions)
    assert ids.shape == mask.shape == (len(captions), 8) and mask.dtype == torch.bool
    assert tok.decode(ids) == captions
    lengths = torch.tensor([len(c.split()) for c in captions])
    assert torch.equal(mask.sum(1), lengths)
    assert torch.equal(mask, torch.arange(8)[None] < lengths[:, None])  # words first, then padding
    assert torch.all(ids[~mask] == PAD_ID) and torch.all(ids[mask] != PAD_ID)
    assert torch.equal(tok.encode(["A handwritten Seven."])[0], tok.encode(["a handwritten seven"])[0])


def test_bad_prompt_names_the_word_and_the_vocabulary():
    tok = _embedder().tokenizer
    with pytest.raises(UnknownWordError) as e:
        tok.encode(["a handwritten seven", "a handwritten elephant"])
    msg = str(e.value)
    assert "'elephant'" in msg and "a handwritten elephant" in msg
    assert all(w in msg for w in tok.vocab)
    with pytest.raises(ValueError, match="1 to 3"):
        _embedder(max_length=3).tokenizer.encode(["a drawing of the digit seven"])


def test_text_embedder_same_caption_same_embedding_different_caption_different():
    emb = _embedder().eval()
    out = emb.embed(["a handwritten seven", "a handwritten seven", "a handwritten one", "the digit seven"])
    assert out["text"].shape == (4, 8, 16) and out["pooled"].shape == (4, 16) and out["text_mask"].shape == (4, 8)
    assert torch.equal(out["text"][0], out["text"][1]) and torch.equal(out["pooled"][0], out["pooled"][1])
    for j in (2, 3):
        assert (out["text"][0] - out["text"][j]).abs().max() > 0.1
        assert (out["pooled"][0] - out["pooled"][j]).abs().max() > 0.1
    assert torch.all(out["text"][~out["text_mask"]] == 0)  # padding carries nothing


# ---------------------------------------------------------------------------------------------- classifier


def test_classifier_is_accurate_on_real_digits_through_the_pixel_round_trip():
    from sklearn.model_selection import train_test_split

    clf = digit_classifier()
    assert clf.held_out_accuracy > 0.97
    images, labels = load_digits_8x8()
    _, x_test, _, y_test = train_test_split(images, labels, test_size=HELD_OUT, random_state=SPLIT_SEED,
                                            stratify=labels)
    # held-out digits upsampled like training images, then downsampled again by the accuracy function
    assert digit_accuracy(digits_to_pixels(x_test, 16), y_test) > 0.97
    assert digit_accuracy(digits_to_pixels(x_test, 32), y_test) > 0.97
    # a wrong label is counted as wrong
    assert digit_accuracy(digits_to_pixels(x_test, 16), (y_test + 1) % 10) < 0.05


def test_classifier_is_at_chance_on_noise():
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(2000, 1, 16, 16, generator=g) * 2 - 1
    labels = np.arange(2000) % 10  # balanced: any label-blind prediction scores 10% on average
    assert abs(digit_accuracy(noise, labels) - 0.1) < 0.04


# ---------------------------------------------------------------------------------------------- recipe


def test_recipe_rejects_a_patch_that_does_not_divide_the_image():
    with pytest.raises(ConfigError, match="model.patch_size"):
        _recipe("model.patch_size=3")
    with pytest.raises(ConfigError, match="model.max_text_length"):
        _recipe("model.max_text_length=3")
    with pytest.raises(ConfigError, match="data.image_size"):
        _recipe("data.image_size=24")


def test_models_share_one_optimizer_and_get_ema():
    task = DigitsImageTask(_recipe())
    models = task.build_models()
    assert task.optimizer_groups(models) == {"main": [VELOCITY, TEXT]}
    assert set(task.ema_models(models)) == {VELOCITY, TEXT}
    assert models[VELOCITY].config.context_dim == models[TEXT].config.dim == 32
    null = task.null_condition(models[VELOCITY])
    assert null["text"].shape == (1, 8, 32) and null["text_mask"].tolist() == [[True] + [False] * 7]


# ---------------------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("digits")
    recipe = _recipe()
    result = Trainer(recipe, DigitsImageTask(recipe), run).train()
    return run, result


@pytest.mark.slow
def test_short_training_lowers_the_loss_and_writes_grids_and_metrics(trained_run):
    run, result = trained_run
    losses = [loss for _, loss in result.loss_history]
    assert len(losses) == 6 and losses[-1] < 0.8 * losses[0], losses
    val = run / "validation" / "step_00000300"
    for w in ("1", "3"):
        assert (val / f"grid_w{w}.png").stat().st_size > 1000
    metrics = json.loads((val / "metrics.json").read_text())
    stability = {f"stability_{k}_{s}" for k in ("amp", "rms", "feat") for s in ("1e-3", "1e-2", "1e-1")}
    assert set(metrics) == {"accuracy_w1", "accuracy_w3", "classifier_accuracy_real", *stability}
    # small-noise check: finite, and a 1e-3 nudge of the noise barely moves the classifier's view
    assert all(0 < metrics[k] < 10 for k in stability if "amp" in k), metrics
    assert metrics["stability_feat_1e-3"] < 0.1, metrics
    assert metrics["classifier_accuracy_real"] > 0.97
    # loose: 300 steps of a small model are far above chance (10%), and guidance helps (seeds 0-2 gave
    # w=1 0.37-0.47, w=3 0.66-0.76; the default recipe reaches 0.89 and 1.0)
    assert metrics["accuracy_w3"] > 0.45 and metrics["accuracy_w3"] > metrics["accuracy_w1"], metrics
    per_digit = json.loads((val / "accuracy_per_digit.json").read_text())
    assert len(per_digit["w3"]) == 10 and per_digit["digits"][7] == "seven"
    info = json.loads((run / "model" / "pipeline.json").read_text())
    assert info["extra_models"] == [TEXT] and "handwritten" in info["text_vocabulary"]


@pytest.mark.slow
def test_exported_model_samples_from_its_folder_alone(trained_run, tmp_path, capsys):
    run, _ = trained_run
    folder = tmp_path / "exported"
    shutil.copytree(run / "model", folder)  # no recipe file, no run folder
    pipe = FlowPipeline.from_pretrained(folder)
    assert set(pipe.extra_models) == {TEXT} and pipe.task.text_embedder is pipe.extra_models[TEXT]
    assert pipe.source.name == f"{VELOCITY}_ema"
    trained = load_file(str(run / "model" / "models" / f"{TEXT}_ema" / "model.safetensors"))
    assert torch.equal(pipe.extra_models[TEXT].tokens.weight, trained["tokens.weight"])

    out = tmp_path / "s"
    argv = ["sample", str(folder), "num_samples=3", "steps=2", "--prompt", "a handwritten seven",
            "--prompt", "the digit 3", "--out", str(out)]
    assert main(argv) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["inputs"] == ["a handwritten seven", "the digit 3"] and len(info["classified_as"]) == 2
    assert info["media"] == "image 1x16x16" and info["samples"] == 6
    files = sorted(out.glob("sample_*.png"))
    assert [f.name for f in files] == [f"sample_{i:04d}.png" for i in range(6)]
    pixels = np.stack([np.asarray(Image.open(f)) for f in files])
    assert pixels.shape == (6, 16, 16) and pixels.dtype == np.uint8  # grayscale, the training size
    meta = get_modality("image").read_metadata(files[4])
    assert meta["prompt"] == "the digit 3" and meta["seed"] == "4" and meta["steps"] == "2"
    assert meta["model"] == pipe.fingerprint and (out / "samples.png").stat().st_size > 200
    # the same seed and prompts -> the same images, from the CLI and from Python; another seed differs
    again = pipe(["a handwritten seven", "the digit 3"], num_per_prompt=3, steps=2)
    assert torch.equal(again.media, pipe(["a handwritten seven", "the digit 3"], num_per_prompt=3, steps=2).media)
    as_png = np.round((again.media[:, 0].numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
    assert np.abs(as_png.astype(int) - pixels.astype(int)).max() <= 1
    other = pipe(["a handwritten seven", "the digit 3"], num_per_prompt=3, steps=2, seed=1)
    assert not torch.equal(other.media, again.media)
    # row i depends on seed + i alone: seed 1's first two sevens are seed 0's second and third
    assert torch.allclose(other.media[0:2], again.media[1:3], atol=1e-5)


@pytest.mark.slow
def test_sample_command_rejects_an_unknown_word(trained_run, tmp_path, capsys):
    run, _ = trained_run
    out = tmp_path / "x"
    assert main(["sample", str(run), "--prompt", "a handwritten sevn", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'sevn'" in err and "seven" in err and "handwritten" in err and not out.exists()
    assert main(["sample", str(run), "--prompt", "a handwritten seven", "--label", "3", "--out", str(out)]) == 2
    assert main(["sample", str(run), "--label", "12", "--out", str(out)]) == 2
    assert not out.exists()
