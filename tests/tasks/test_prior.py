"""DreamBooth prior preservation (data.prior, mmflow/tasks/prior.py): class items made once by a tiny base model
of each modality (topped up, never regenerated), batches with the configured share of class rows, the loss
against a hand computation, refusals naming their key, and a LoRA DreamBooth run through the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from media_factory import noisy_frames, sine, write_audio, write_captioned_squares, write_jsonl, write_mp4  # noqa: E402

from mmflow.cli import main  # noqa: E402
from mmflow.config import ConfigError  # noqa: E402
from mmflow.data.captions import load_captions  # noqa: E402
from mmflow.data.joint import SOURCE  # noqa: E402
from mmflow.flow.loss import cfm_loss  # noqa: E402
from mmflow.modalities import get_modality  # noqa: E402
from mmflow.tasks import recipe_from_dict  # noqa: E402
from mmflow.tasks.prior import class_items, make_class_media, prior_row_weights  # noqa: E402
from mmflow.tasks.text_to_media import TextToMediaTask  # noqa: E402
from mmflow.train.trainer import Trainer, make_accelerator  # noqa: E402

CLASS_PROMPT = "a photo of a star"
SUBJECT = "a photo of sks star"
RATE = 800  # audio: 0.1 s windows of 80 samples
DATA = {"image": {"modality": "image", "size": 8},
        "video": {"modality": "video", "size": 8, "frames": 3, "fps": 8.0},
        "audio": {"modality": "audio", "sample_rate": RATE, "seconds": 0.1, "crop": "start"}}
PATCH = {"image": [2, 2], "video": [1, 2, 2], "audio": [8]}


def _media(folder: Path, modality: str, captions: list[str]) -> Path:
    """Four tiny items of `modality` with metadata.jsonl captions (cycled)."""
    if modality == "image":
        return write_captioned_squares(folder, 8, captions)
    folder.mkdir(parents=True)
    suffix = get_modality(modality).suffix
    for i in range(4):
        if modality == "video":
            write_mp4(folder / f"{i}{suffix}", noisy_frames(4, 8, 8, seed=i))
        else:
            write_audio(folder / f"{i}{suffix}", sine(0.2, RATE, freq=100.0 * (i + 1)), RATE)
    write_jsonl(folder / "metadata.jsonl", [{"file_name": f"{i}{suffix}", "text": captions[i % len(captions)]}
                                            for i in range(4)])
    return folder


def _raw(root: Path, modality: str, data: Path, **extra) -> dict:
    return {"name": "t2m", "task": "text_to_media", "seed": 0, "run_dir": str(root / "run"),
            "data": {"path": str(data), **DATA[modality], "use_cache": "off", "eval_prompts": [CLASS_PROMPT],
                     "eval_per_prompt": 1},
            "model": {"tokenizer": None, "text": {"encoders": [{"path": "minilm", "max_length": 8}]},
                      "mmdit": {"preset": "test", "patch_size": PATCH[modality]}},
            "train": {"batch_size": 4, "max_steps": 1, "lr": 1e-3, "log_every": 1, "checkpoint_every": 1,
                      "trackers": [], "ema_decay": None, "device": "cpu"},
            "sample": {"steps": 2, "num_samples": 1, "guidance": 2.0, "solver": "euler"}, **extra}


def _train(raw: dict, run: Path) -> Path:
    recipe = recipe_from_dict(raw, source="test")
    Trainer(recipe, TextToMediaTask(recipe), run, accelerator=make_accelerator(recipe.train, run)).train()
    return run


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    """A one-step text-to-<modality> base (pixel / waveform space) per modality, trained on class captions."""
    root = tmp_path_factory.mktemp("bases")
    return {m: _train(_raw(root / m, m, _media(root / m / "data", m, [CLASS_PROMPT])), root / m / "run")
            for m in DATA}


def _dreambooth(root: Path, modality: str, base: Path, **prior) -> dict:
    raw = _raw(root, modality, _media(root / "subject", modality, [SUBJECT]))
    raw["data"]["prior"] = {"path": str(root / "class"), "prompt": CLASS_PROMPT, "num": 3, "batch_size": 2,
                            "sample": {"steps": 1}, **prior}
    raw["train"]["init_from"] = str(base)
    return raw


@pytest.mark.parametrize("modality", list(DATA))
def test_class_items_are_made_once_with_the_class_prompt_and_topped_up(tmp_path, bases, modality, caplog) -> None:
    recipe = recipe_from_dict(_dreambooth(tmp_path, modality, bases[modality]), source="test")
    folder, spec = tmp_path / "class", get_modality(modality)
    assert make_class_media(recipe, torch.device("cpu")) == 3
    items = class_items(folder, recipe.data.media_extensions)
    assert sorted(e.path.name for e in items) == [f"class_{j:05d}{spec.suffix}" for j in range(3)]
    assert {e.text for e in items} == {CLASS_PROMPT}
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no partial file left
    part = TextToMediaTask(recipe).prior_part()
    item = part.raw_dataset()[0]
    assert tuple(item["media"].shape) == spec.media_shape(recipe.data) and item["text"] == CLASS_PROMPT

    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert make_class_media(recipe, torch.device("cpu")) == 0  # enough: nothing is made again
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps

    # a stopped run's leftovers (a partial file, a file renamed into place but not listed) and a lost item
    (folder / f".partial-class_00009{spec.suffix}").write_bytes(b"half")
    (folder / f"class_00001{spec.suffix}").unlink()
    lines = (folder / "metadata.jsonl").read_text().splitlines()
    (folder / "metadata.jsonl").write_text("\n".join(line for line in lines if "00002" not in line) + "\n")
    assert make_class_media(recipe, torch.device("cpu")) == 2  # class_00002 was unlisted: removed, then made again
    items = class_items(folder, recipe.data.media_extensions)
    assert len(items) == 3 and {e.text for e in items} == {CLASS_PROMPT}
    assert not (folder / f".partial-class_00009{spec.suffix}").exists()
    assert len(load_captions(folder, recipe.data.media_extensions).uncaptioned) == 0


def test_batches_hold_the_class_share_and_the_loss_weights_them(tmp_path, bases) -> None:
    raw = _dreambooth(tmp_path, "image", bases["image"], num=4, fraction=0.25, weight=2.0)
    raw["train"]["batch_size"] = 8
    recipe = recipe_from_dict(raw, source="test")
    task = TextToMediaTask(recipe)
    task.prepare_data(torch.device("cpu"))
    dataset = task.build_dataset()
    sampler = iter(task.batch_sampler(dataset, 8, 0, 1, 0, 0))
    for _ in range(3):
        batch = task.collate([dataset[k] for k in next(sampler)])
        assert batch[SOURCE].tolist() == [0] * 6 + [1] * 2  # round(0.25 * 8) class rows, after the instance rows
        assert batch["text"] == [SUBJECT] * 6 + [CLASS_PROMPT] * 2
    weights = prior_row_weights(batch[SOURCE] == 1, 2.0)
    torch.testing.assert_close(weights, torch.tensor([1 / 6] * 6 + [2.0 / 2] * 2))


@pytest.mark.parametrize("weighting", ["none", "cosmap"])
def test_weighted_loss_is_dreambooths_instance_mean_plus_weight_times_class_mean(weighting) -> None:
    g = torch.Generator().manual_seed(0)
    pred, target, t = torch.randn(5, 3, 4, generator=g), torch.randn(5, 3, 4, generator=g), torch.rand(5, generator=g)
    is_class = torch.tensor([False, False, False, True, True])
    out = cfm_loss(pred, target, t, weighting, row_weight=prior_row_weights(is_class, 0.7))
    # by hand: each row's mean squared error times its w(t), instance rows averaged, plus 0.7 x the class rows' mean
    w = torch.ones(5) if weighting == "none" else 2.0 / (torch.pi * (1 - 2 * (1 - t) + 2 * (1 - t) ** 2))
    per_row = [float(w[b]) * float(((pred[b] - target[b]) ** 2).mean()) for b in range(5)]
    hand = sum(per_row[:3]) / 3 + 0.7 * sum(per_row[3:]) / 2
    assert abs(float(out.loss) - hand) < 1e-6
    plain = cfm_loss(pred, target, t, weighting)  # row weights 1/B are the plain mean
    torch.testing.assert_close(cfm_loss(pred, target, t, weighting, row_weight=torch.full((5,), 0.2)).loss, plain.loss)


def test_refusals_name_their_key(tmp_path, bases) -> None:
    raw = _dreambooth(tmp_path, "image", bases["image"])

    def refused(key: str, change) -> None:
        bad = json.loads(json.dumps(raw))
        change(bad)
        with pytest.raises(ConfigError) as info:
            recipe_from_dict(bad, source="test")
        assert info.value.key == key, info.value

    refused("train.init_from", lambda r: r["train"].pop("init_from"))
    refused("data.prior.fraction", lambda r: r["data"]["prior"].update(fraction=1.0))
    refused("data.prior.fraction", lambda r: r["data"]["prior"].update(fraction=0.0))
    refused("data.prior.weight", lambda r: r["data"]["prior"].update(weight=0.0))
    refused("data.prior.prompt", lambda r: r["data"]["prior"].update(prompt=" "))
    refused("data.prior.sample.stepz", lambda r: r["data"]["prior"]["sample"].update(stepz=2))
    refused("data.prior.path", lambda r: r["data"]["prior"].update(path=str(Path(r["data"]["path"]) / "class")))
    refused("train.batch_size", lambda r: r["train"].update(batch_size=1))

    # the base makes images; an audio recipe's class items cannot come from it
    audio = _raw(tmp_path / "a", "audio", _media(tmp_path / "a" / "subject", "audio", [SUBJECT]))
    audio["data"]["prior"] = {"path": str(tmp_path / "a" / "class"), "prompt": CLASS_PROMPT, "num": 2}
    audio["train"]["init_from"] = str(bases["image"])
    with pytest.raises(ConfigError, match="makes image from text") as info:
        make_class_media(recipe_from_dict(audio, source="test"), torch.device("cpu"))
    assert info.value.key == "train.init_from"
    # a sample setting the base's sampler refuses, named under data.prior
    bad = recipe_from_dict({**raw, "data": {**raw["data"], "prior": {**raw["data"]["prior"], "sample": {"steps": 0}}}},
                           source="test")
    with pytest.raises(ConfigError) as info:
        make_class_media(bad, torch.device("cpu"))
    assert info.value.key == "data.prior.sample.steps"


@pytest.mark.slow
def test_a_lora_dreambooth_run_through_the_cli(tmp_path, bases, capsys) -> None:
    """Rare-token instance captions, class items made by the base once, LoRA adapters, sampled with --lora; then a
    full fine-tune that reuses the class folder and its cache (`mmflow prepare`)."""
    raw = _dreambooth(tmp_path, "image", bases["image"], num=4)
    raw["train"].update(max_steps=2, checkpoint_every=2)
    raw["data"]["use_cache"] = "auto"
    recipe = tmp_path / "dreambooth.yaml"
    recipe.write_text(json.dumps(raw))
    run = tmp_path / "lora"
    assert main(["train", str(recipe), "train.lora.rank=2", "--run-dir", str(run)]) == 0
    log = (run / "train.log").read_text()
    assert "made 4 class items" in log and "instance items" not in log, log
    assert len(class_items(tmp_path / "class", ("png",))) == 4
    assert (run / "model" / "models" / "velocity" / "adapter_model.safetensors").is_file()
    out = tmp_path / "samples"
    assert main(["sample", str(bases["image"]), "--lora", str(run), "--prompt", SUBJECT, "--out", str(out),
                 "steps=2"]) == 0
    assert (out / "sample_0000.png").is_file()

    assert main(["prepare", str(recipe), f"run_dir={tmp_path / 'full'}"]) == 0
    assert (tmp_path / "full" / "cache-prior" / "index.json").is_file()
    capsys.readouterr()
    assert main(["train", str(recipe), f"run_dir={tmp_path / 'full'}"]) == 0
    log = (tmp_path / "full" / "train.log").read_text()
    assert "holds 4 class items (4 wanted): none made" in log and "reading the cache" in log, log
    assert "cache-prior" in log, log
    metrics = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert np.isfinite(metrics["final_loss"])
