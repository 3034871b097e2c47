"""The general text-to-media task: raw media and cached training agree, staleness, bad media, sampling."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from media_factory import write_image, write_zero_byte  # noqa: E402

from launched import run_launched  # noqa: E402
from mmflow.cli import main  # noqa: E402
from mmflow.data.cache import StaleCacheError, cache_problem  # noqa: E402
from mmflow.model_io import save_model  # noqa: E402
from mmflow.tasks import recipe_from_dict  # noqa: E402
from mmflow.tasks.media_cache import prepare_cache  # noqa: E402
from mmflow.tasks.text_to_media import TextToMediaTask  # noqa: E402
from mmflow.tokenizers import ImageVAE, image_vae_config  # noqa: E402
from mmflow.train.trainer import Trainer, make_accelerator  # noqa: E402

CAPTIONS = ["a red square", "a blue square", "a green circle", "a yellow circle"]
COLOURS = [(220, 30, 30), (30, 30, 220), (30, 200, 30), (230, 220, 30)]


def _folder(root: Path, n: int = 8, bad: bool = False) -> Path:
    rows = []
    for i in range(n):
        img = np.full((16, 16, 3), 250, np.uint8)
        c = i % 4
        if c < 2:
            img[4:12, 4:12] = COLOURS[c]
        else:
            yy, xx = np.mgrid[:16, :16]
            img[(yy - 8) ** 2 + (xx - 8) ** 2 < 20] = COLOURS[c]
        write_image(root / f"{i:02d}.png", img)
        rows.append({"file_name": f"{i:02d}.png", "text": CAPTIONS[c]})
    if bad:
        write_zero_byte(root / "broken.png")
        rows.append({"file_name": "broken.png", "text": "a broken file"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _recipe(tmp_path: Path, folder: Path, tokenizer: Path | None, patch_size=(2, 2), **data):
    return recipe_from_dict(_raw_recipe(tmp_path, folder, tokenizer, patch_size, **data), source="test")


def _raw_recipe(tmp_path: Path, folder: Path, tokenizer: Path | None, patch_size=(2, 2), **data) -> dict:
    return {
        "name": "t2m", "task": "text_to_media", "seed": 0, "run_dir": str(tmp_path / "run"),
        "data": {"path": str(folder), "modality": "image", "size": 16, "eval_prompts": CAPTIONS[:2],
                 "eval_per_prompt": 1, **data},
        "model": {"tokenizer": None if tokenizer is None else str(tokenizer),
                  "text": {"encoders": [{"path": "minilm", "max_length": 8, "dropout": 0.2}]},
                  "mmdit": {"preset": "test", "patch_size": list(patch_size)}},
        "flow": {"cfg_dropout": 0.1},
        "train": {"batch_size": 4, "max_steps": 3, "lr": 1e-3, "log_every": 1, "checkpoint_every": 3,
                  "trackers": [], "ema_decay": None},
        "sample": {"steps": 2, "num_samples": 2, "guidance": 2.0},
    }


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    vae = ImageVAE(image_vae_config("test", latent_channels=4, latent_shift=[0.1] * 4, latent_scale=[2.0] * 4))
    return save_model(vae, tmp_path_factory.mktemp("vae") / "vae")


def _train(recipe, run_dir: Path):
    task = TextToMediaTask(recipe)
    return Trainer(recipe, task, run_dir, accelerator=make_accelerator(recipe.train, run_dir)).train(), task


def test_training_from_the_cache_equals_training_from_the_raw_media(tmp_path, vae_dir, fresh_accelerate):
    folder = _folder(tmp_path / "media")
    raw_recipe = _recipe(tmp_path, folder, vae_dir, use_cache="off")
    raw, _ = _train(raw_recipe, tmp_path / "raw")
    assert (tmp_path / "raw" / "validation" / "step_00000003" / "samples.png").exists()

    cached_recipe = _recipe(tmp_path, folder, vae_dir, use_cache="require", cache=str(tmp_path / "cache"),
                            crop="center")
    task = TextToMediaTask(cached_recipe)
    result = prepare_cache(task, make_accelerator(cached_recipe.train, tmp_path / "cached"))
    assert result.cached == 8 and not result.skipped
    cached, _ = _train(cached_recipe, tmp_path / "cached")
    # same data order, same posterior noise, same times and drops: the same weights (to float error)
    a = load_file(str(tmp_path / "raw" / "model" / "models" / "velocity" / "model.safetensors"))
    b = load_file(str(tmp_path / "cached" / "model" / "models" / "velocity" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)
    assert [round(v, 5) for _, v in raw.loss_history] == [round(v, 5) for _, v in cached.loss_history]


def test_a_changed_caption_makes_the_cache_stale(tmp_path, fresh_accelerate):
    folder = _folder(tmp_path / "media", n=4)
    recipe = _recipe(tmp_path, folder, None, use_cache="require")
    task = TextToMediaTask(recipe)
    prepare_cache(task, make_accelerator(recipe.train, tmp_path / "run"))
    assert cache_problem(task.cache_dir(), task.describe(task.raw_dataset())) is None
    meta = folder / "metadata.jsonl"
    meta.write_text(meta.read_text().replace("a red square", "a crimson square"))
    problem = cache_problem(task.cache_dir(), task.describe(task.raw_dataset()))
    assert "stale" in problem and "files.00.png" in problem
    with pytest.raises(StaleCacheError, match="files.00.png"):
        TextToMediaTask(recipe).build_dataset()


def test_another_seed_reuses_a_cache_unless_a_random_crop_had_a_choice(tmp_path, fresh_accelerate, caplog):
    exact = _folder(tmp_path / "exact", n=4)  # 16 x 16 images at size 16: a random crop has no choice
    wide = tmp_path / "wide"
    wide.mkdir()
    for f in exact.iterdir():  # the same images 4 pixels wider: a random crop draws its offset
        if f.suffix == ".png":
            img = np.asarray(Image.open(f).convert("RGB"))
            write_image(wide / f.name, np.concatenate([img, img[:, :4]], axis=1))
        else:
            (wide / f.name).write_text(f.read_text())
    for folder, crop, stale in ((exact, "center", False), (exact, "random", False), (wide, "random", True)):
        raw = _raw_recipe(tmp_path, folder, None, use_cache="require", crop=crop,
                          cache=str(tmp_path / f"{folder.name}-{crop}"))
        recipe = recipe_from_dict(raw, source="test")
        with caplog.at_level("INFO", logger="mmflow"):
            prepare_cache(TextToMediaTask(recipe), make_accelerator(recipe.train, tmp_path / "run"))
        said = "holds for every seed" in caplog.text
        caplog.clear()
        assert said == (crop == "random" and not stale), (folder.name, crop)
        other = TextToMediaTask(recipe_from_dict({**raw, "seed": 1}, source="test"))
        problem = cache_problem(other.cache_dir(), other.describe(other.raw_dataset()))
        assert (problem is not None and "changed: seed" in problem) if stale else problem is None, (crop, problem)


def test_bad_media_are_skipped_counted_and_reported(tmp_path, fresh_accelerate, capsys):
    folder = _folder(tmp_path / "media", n=8, bad=True)
    recipe = _recipe(tmp_path, folder, None, use_cache="off", max_bad_fraction=0.5)
    result, _ = _train(recipe, tmp_path / "run")
    assert result.metrics["bad_items"] >= 1  # the zero-byte file was asked for and replaced
    assert "broken.png" in (tmp_path / "run" / "train.log").read_text()
    over = ["data.use_cache=auto", f"run_dir={tmp_path / 'prep'}"]
    recipe_file = tmp_path / "recipe.yaml"
    from mmflow.config import dump_yaml

    dump_yaml(recipe, recipe_file)
    assert main(["prepare", str(recipe_file), *over]) == 0
    out = capsys.readouterr().out
    assert "8 items cached, 1 bad items skipped" in out and "broken.png: empty file" in out
    assert main(["prepare", str(recipe_file), *over, "data.max_bad_fraction=0.01"]) == 2
    assert "more than data.max_bad_fraction" in capsys.readouterr().err


def test_sampling_writes_one_row_per_prompt_and_checks_patch_sizes(tmp_path, vae_dir, fresh_accelerate):
    folder = _folder(tmp_path / "media", n=4)
    recipe = _recipe(tmp_path, folder, vae_dir, use_cache="off")
    _train(recipe, tmp_path / "run")
    assert main(["sample", str(tmp_path / "run"), "num_samples=2", "--prompt", "a red square",
                 "--prompt", "a green circle", "--out", str(tmp_path / "out")]) == 0
    from PIL import Image

    assert main(["sample", str(tmp_path / "run"), "num_samples=2", "--prompt", "a red square",
                 "--out", str(tmp_path / "one")]) == 0
    two_rows, one_row = Image.open(tmp_path / "out" / "samples.png"), Image.open(tmp_path / "one" / "samples.png")
    assert two_rows.size[1] > 1.5 * one_row.size[1]  # a row per prompt (widths follow the labels)
    index = json.loads((tmp_path / "out" / "samples.json").read_text())
    assert [r["input"] for r in index["samples"]] == ["a red square"] * 2 + ["a green circle"] * 2
    assert sorted(p.name for p in (tmp_path / "out").glob("sample_*.png")) == [f"sample_{i:04d}.png" for i in range(4)]
    bad = _recipe(tmp_path, folder, vae_dir, use_cache="off")
    bad.model.mmdit.patch_size = (3, 3)  # the test VAE makes 8x8 latents
    with pytest.raises(Exception, match="does not divide the latent sizes"):
        TextToMediaTask(bad).build_models()


def test_frozen_models_load_lazily_and_runtime_settings_stay_out_of_the_export(tmp_path, vae_dir):
    recipe = _recipe(tmp_path, _folder(tmp_path / "media", n=4), vae_dir, use_cache="off")
    recipe.model.attention_backend, recipe.model.gradient_checkpointing = "math", True
    task = TextToMediaTask(recipe)
    frozen = task.frozen_models()  # the encoders' modules, loaded on first call
    assert sorted(frozen) == ["text", "tokenizer"] and frozen == task.encoders.modules()
    assert all(not m.training and not any(p.requires_grad for p in m.parameters()) for m in frozen.values())
    task.place_frozen_models(torch.device("meta"))  # the one public way the trainer and `prepare` place them
    assert {p.device.type for m in frozen.values() for p in m.parameters()} == {"meta"}

    velocity = TextToMediaTask(recipe).build_models()["velocity"]
    assert velocity.backend == "math" and velocity.gradient_checkpointing  # applied from the recipe...
    config = json.loads((save_model(velocity, tmp_path / "v") / "config.json").read_text())["config"]
    assert not {"attention_backend", "gradient_checkpointing"} & set(config)  # ...not saved with the weights


@pytest.mark.parametrize("modality", ["video", "audio"])
def test_video_and_audio_train_and_sample_as_more_tokens(tmp_path, modality, fresh_accelerate):
    from media_factory import noisy_frames, sine, write_audio, write_mp4
    from PIL import Image

    folder = tmp_path / "media"
    rows = []
    for i in range(4):
        name = f"{i}.mp4" if modality == "video" else f"{i}.wav"
        if modality == "video":
            write_mp4(folder / name, noisy_frames(6, 32, 32, seed=i))
        else:
            write_audio(folder / name, sine(0.5, 8000, freq=220.0 * (i + 1)), 8000)
        rows.append({"file_name": name, "text": CAPTIONS[i]})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = ({"frames": 4, "size": 16} if modality == "video" else {"sample_rate": 8000, "seconds": 0.25})
    recipe = _recipe(tmp_path, folder, None, patch_size=(2, 4, 4) if modality == "video" else (50,),
                     use_cache="off", modality=modality, **data)
    result, _ = _train(recipe, tmp_path / "run")
    assert np.isfinite(result.final_loss)
    out = tmp_path / "run" / "validation" / "step_00000003"
    assert Image.open(out / "samples.png").size[0] > 16  # the modality's preview: frame strips / waveforms
    if modality == "video":
        import av

        with av.open(str(out / "sample_000.mp4")) as c:
            assert c.streams.video[0].frames == 4 or sum(1 for _ in c.decode(video=0)) == 4
    else:
        import soundfile as sf

        wave, rate = sf.read(str(out / "sample_000.wav"))
        assert rate == 8000 and len(wave) == 2000


def test_the_emoji_recipe_validates(tmp_path):
    from mmflow.tasks import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "emoji_image.yaml")
    assert recipe.model.text.null_mode == "empty" and recipe.model.text.encoders[0].path == "minilm"


def _with_model(raw: dict, **model) -> dict:
    return {**raw, "model": {**raw["model"], **model}}


def test_mmdit_preset_with_overrides_and_the_filled_in_widths(tmp_path):
    raw = _raw_recipe(tmp_path, _folder(tmp_path / "media", n=4), None)
    task = TextToMediaTask(recipe_from_dict(_with_model(raw, mmdit={"preset": "S", "depth": 3, "qk_norm": None})))
    config = task.mmdit_config()
    assert (config.hidden_size, config.num_heads, config.depth, config.qk_norm) == (384, 6, 3, None)  # S, then overrides
    assert config.in_channels == 3 and config.context_dim == config.pooled_dim == 384  # pixels, MiniLM
    assert (config.pos_embed, config.null_text, config.patch_size) == ("rope", "zeros", (2, 2))
    default = TextToMediaTask(recipe_from_dict(_with_model(raw, mmdit={}))).mmdit_config()
    assert (default.hidden_size, default.depth, default.num_heads, default.qk_norm) == (256, 6, 4, "rms_norm")


@pytest.mark.parametrize("mmdit,key,words", [
    ({"preset": "XXL"}, "model.mmdit.preset", ["'XXL'", "'tiny'"]),
    ({"hidden": 64}, "model.mmdit.hidden", ["unknown key", "'hidden_size'", "'patch_size'"]),
    ({"in_channels": 8}, "model.mmdit.in_channels", ["unknown key"]),  # the task fills it in
    ({"patch_size": [2, 2, 2]}, "model.mmdit.patch_size", ["3 entries", "image latents have 2 axes"]),
    ({"patch_size": [0, 2]}, "model.mmdit.patch_size[0]", ["out of bounds"]),
    ({"preset": "test", "num_heads": 3}, "model.mmdit.num_heads", ["does not divide hidden_size 32"]),
    ({"hidden_size": 12, "num_heads": 6}, "model.mmdit.num_heads", ["even head_dim"]),  # rope's 2-wide heads
    ({"pos_embed_max_size": 64}, "model.mmdit.pos_embed_max_size", ["applies to pos_embed sincos"]),
    ({"pos_embed": "sincos", "rope_theta": 100.0}, "model.mmdit.rope_theta", ["applies to pos_embed rope"]),
    ({"pos_embed": "sincos", "hidden_size": 30, "num_heads": 3}, "model.mmdit.hidden_size", ["multiple of 4"]),
    ({"text_positions": 7}, "model.mmdit.text_positions", ["7 text positions for 8 text tokens", "at least 8"]),
    ({"text_positions": -1}, "model.mmdit.text_positions", ["out of bounds"]),
    ({"text_refiner": -1}, "model.mmdit.text_refiner", ["out of bounds"]),
])
def test_mmdit_section_errors_name_the_dotted_key(tmp_path, mmdit, key, words):
    from mmflow.config import ConfigError

    raw = _with_model(_raw_recipe(tmp_path, _folder(tmp_path / "media", n=4), None), mmdit=mmdit)
    with pytest.raises(ConfigError) as info:
        recipe_from_dict(raw, source="test")
    assert info.value.key == key and info.value.source == "test", str(info.value)
    assert all(w in info.value.message for w in words), str(info.value)


def test_flat_mmdit_keys_of_older_recipes_still_load(tmp_path, caplog):
    from mmflow.config import ConfigError
    from mmflow.tasks import load_recipe

    raw = _raw_recipe(tmp_path, _folder(tmp_path / "media", n=4), None)
    flat = {"hidden_size": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0, "patch_size": [4, 4], "qk_norm": None}
    model = {k: v for k, v in raw["model"].items() if k != "mmdit"}
    old = {**raw, "model": {**model, **flat}}  # what pipeline.json held before model.mmdit
    with caplog.at_level("WARNING", logger="mmflow.tasks"):
        legacy = recipe_from_dict(old, source="old/pipeline.json")
    assert [r.getMessage() for r in caplog.records if "moved under model.mmdit" in r.getMessage()] == [
        "old/pipeline.json: model.hidden_size, depth, num_heads, mlp_ratio, patch_size, qk_norm moved under "
        "model.mmdit (read as model.mmdit.hidden_size, depth, num_heads, mlp_ratio, patch_size, qk_norm); "
        "please update the recipe"]
    nested = recipe_from_dict(_with_model(raw, mmdit=flat))
    assert legacy.model == nested.model
    assert TextToMediaTask(legacy).mmdit_config() == TextToMediaTask(nested).mmdit_config()

    import yaml

    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({**old, "model": {**model, "depth": 3}}))
    caplog.clear()
    with caplog.at_level("WARNING", logger="mmflow.tasks"):
        assert load_recipe(path).model.mmdit.depth == 3  # a YAML recipe: one warning, not an error
    assert sum("moved under model.mmdit" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(ConfigError, match="keep model.mmdit.depth only") as info:
        recipe_from_dict(_with_model(raw, mmdit={"depth": 2}, depth=3))
    assert info.value.key == "model.depth"


@pytest.mark.slow
def test_prepare_on_two_processes_writes_the_same_cache_as_one(tmp_path, vae_dir, fresh_accelerate):
    import os
    import socket

    from mmflow.config import dump_yaml
    from mmflow.data.cache import CachedDataset

    folder = _folder(tmp_path / "media", n=7, bad=True)  # an odd count and a bad file: uneven shares
    recipe = _recipe(tmp_path, folder, vae_dir, use_cache="require", max_bad_fraction=0.5)
    recipe.train.device = "cpu"
    recipe_file = tmp_path / "recipe.yaml"
    dump_yaml(recipe, recipe_file)
    assert main(["prepare", str(recipe_file), f"data.cache={tmp_path / 'one'}"]) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    done = run_launched([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                         "--main_process_port", str(port), "-m", "mmflow", "prepare", str(recipe_file),
                         f"data.cache={tmp_path / 'two'}"], env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = CachedDataset(tmp_path / "one"), CachedDataset(tmp_path / "two")
    assert one.keys == two.keys and len(one) == 7
    assert len(two.index["skipped"]) == 1 and "broken.png" in two.index["skipped"][0][0]
    assert len({v for v in two.index["items"].values()}) >= 2  # both ranks wrote shards
    for k in range(len(one)):
        a, b = one[k], two[k]
        for field_name in one.fields:
            torch.testing.assert_close(a[field_name], b[field_name], atol=1e-5, rtol=1e-5, msg=field_name)


def test_a_trained_model_folder_carries_its_tokenizer_and_text_encoder_and_samples_as_validation_did(tmp_path, vae_dir, fresh_accelerate):
    import shutil

    from test_encoders import tiny_bert

    from mmflow.model_io import load_model
    from mmflow.text import TextConditionerConfig, TextEncoderConfig
    from mmflow.train.checkpoint import verify_checkpoint

    src = tmp_path / "src"
    vae, bert = Path(shutil.copytree(vae_dir, src / "vae")), tiny_bert(src / "bert")
    recipe = _recipe(tmp_path, _folder(tmp_path / "media", n=4), vae, use_cache="off")
    recipe.model.text = TextConditionerConfig(encoders=[TextEncoderConfig(path=str(bert), max_length=8, dropout=0.2)])
    run = tmp_path / "run"
    _train(recipe, run)
    checkpoint = run / "checkpoints" / "step_00000003"
    assert verify_checkpoint(checkpoint) is None  # the MANIFEST covers the bundled copies under models/
    for folder in (checkpoint, run / "model"):
        components = json.loads((folder / "pipeline.json").read_text())["components"]
        assert components["text_encoders"] == {"bert": {"mode": "copy", "folder": "models/text_encoders/bert"}}
        assert components["tokenizer"]["folder"] == "models/tokenizer"
        assert (folder / "models" / "text_encoders" / "bert" / "model.safetensors").is_file()

    moved = Path(shutil.move(str(run / "model"), str(tmp_path / "moved")))
    shutil.rmtree(src)
    shutil.rmtree(run)
    info = json.loads((moved / "pipeline.json").read_text())
    resolved = TextToMediaTask.resolve_exported(info["recipe"], info["components"], moved)
    again = recipe_from_dict(resolved, source=str(moved / "pipeline.json"))  # parses: no path points at src
    assert again.model.tokenizer == str(moved / "models" / "tokenizer")
    task = TextToMediaTask(again)
    velocity = load_model(moved / "models" / "velocity").eval()
    prompts = ["a red square", "a blue circle", "a red square"]
    media = task.sample_media(velocity, prompts, torch.device("cpu"), again.sample)
    assert media.shape == (3, 3, 16, 16) and torch.isfinite(media).all()
    # validation draws the pipeline's noise (row i from seed + i), so `mmflow eval` of the export reads the
    # same samples as the run's own prompt check
    from mmflow.pipeline import FlowPipeline

    piped = FlowPipeline.from_pretrained(moved)(prompts, seed=again.sample.seed, batch_size=2).media
    torch.testing.assert_close(piped, media, atol=1e-5, rtol=0)
    assert not torch.allclose(media[0], media[2], atol=1e-3)  # one prompt, two rows: two noises


def test_the_run_summary_is_the_prompt_check_table_then_the_quality_line(tmp_path):
    raw = _raw_recipe(tmp_path, tmp_path / "data", None)
    assert TextToMediaTask(recipe_from_dict(raw)).summary_lines({"loss": 0.1}, tmp_path) == []  # nothing evaluated
    raw["eval"] = {"check": "shapes", "metrics": ["fd"], "features": "pixels", "num_samples": 8}
    task = TextToMediaTask(recipe_from_dict(raw))
    metrics = {"loss": 0.1, "eval_shapes_colour": 0.875, "eval_shapes_shape": None, "eval_fd": 12.3456}
    assert task.summary_lines(metrics, tmp_path) == [
        f"prompt check 'shapes': 8 samples of the prompts of {tmp_path / 'data'} (guidance 2, heun x 2); fraction right:",
        "  colour        0.875",
        "  shape         n/a",
        "quality: fd 12.35"]


def test_sincos_positions_take_the_converted_sd3_model_and_must_cover_the_items(tmp_path):
    """model.mmdit as the SD3 converter writes it (mmdit_section) resolves to the converted config; a table
    smaller than the items' patch grid is refused naming pos_embed_max_size."""
    from mmflow.config import ConfigError
    from mmflow.models.mmdit import mmdit_config
    from mmflow.tasks.text_to_media import MMDiTSection, mmdit_section, resolve_mmdit
    from mmflow.config import from_dict

    sd3 = mmdit_config("test", in_channels=3, context_dim=384, pooled_dim=384, pos_embed="sincos", pos_embed_max_size=8,
                       pos_embed_base_size=4, time_shift=1000.0, time_scale=-1000.0, null_text="zeros")
    section = from_dict(MMDiTSection, mmdit_section(sd3))
    assert resolve_mmdit(section, in_channels=3, context_dim=384, pooled_dim=384) == sd3
    raw = _raw_recipe(tmp_path, _folder(tmp_path / "media", n=4), None)
    fits = TextToMediaTask(recipe_from_dict(_with_model(raw, mmdit=mmdit_section(sd3))))
    assert fits.build_models()["velocity"].config.pos_embed == "sincos"  # 16 px / patch 2 = 8 patches a side
    small = TextToMediaTask(recipe_from_dict(_with_model(raw, mmdit={**mmdit_section(sd3), "pos_embed_max_size": 6})))
    with pytest.raises(ConfigError) as info:
        small.build_models()
    assert info.value.key == "model.mmdit.pos_embed_max_size" and "8" in str(info.value)


def test_reflow_trains_on_the_teachers_pairs_made_once(tmp_path, vae_dir, fresh_accelerate):
    from mmflow.config import ConfigError
    from mmflow.flow.reflow import PAIRS_FILE, read_pairs
    from mmflow.pipeline import FlowPipeline

    folder = _folder(tmp_path / "media", n=4)
    teacher = tmp_path / "teacher"
    _train(_recipe(tmp_path, folder, vae_dir, use_cache="off"), teacher)
    fresh_accelerate()
    raw = _raw_recipe(tmp_path, folder, vae_dir, use_cache="off")
    raw["run_dir"] = str(tmp_path / "student")
    raw["flow"] = {"cfg_dropout": 0.0, "reflow": {"teacher": str(teacher), "pairs": 6, "batch_size": 4,
                                                  "sample": {"solver": "euler", "steps": 3, "guidance": 3.0}}}
    raw["train"]["init_from"] = str(teacher)
    raw["sample"] = {"solver": "euler", "steps": 1, "num_samples": 2, "guidance": 1.0}
    _, task = _train(recipe_from_dict(raw), tmp_path / "student")
    pairs = tmp_path / "student" / "reflow_pairs"
    x0, x1, inputs = read_pairs(pairs)
    assert x0.shape == x1.shape == (6, *task.latent_shape())
    assert inputs == [CAPTIONS[i] for i in (0, 1, 1, 2, 3, 3)]  # the 4 training captions, spread over 6 pairs
    # pair j is the teacher's own sample from seed j at the pairs' settings, before decoding
    pipe = FlowPipeline.from_pretrained(teacher)
    out = pipe(inputs[1], seed=1, solver="euler", steps=3, guidance=3.0)
    torch.testing.assert_close(out.media[0], pipe.task.sample_layout().decode(x1[1:2])[0].clamp(-1, 1),
                               atol=1e-5, rtol=1e-5)
    assert torch.equal(x0[1], torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(1)))
    made = (pairs / PAIRS_FILE).stat().st_mtime_ns
    task.make_reflow_pairs(torch.device("cpu"))  # a second start: the pairs are there
    assert (pairs / PAIRS_FILE).stat().st_mtime_ns == made
    raw["flow"]["reflow"]["sample"]["guidance"] = 2.0  # other settings: made again
    TextToMediaTask(recipe_from_dict(raw)).make_reflow_pairs(torch.device("cpu"))
    assert not torch.equal(read_pairs(pairs)[1], x1)
    assert main(["sample", str(tmp_path / "student"), "--prompt", "a red square", "--out", str(tmp_path / "out")]) == 0
    pixels = recipe_from_dict({**raw, "model": {**raw["model"], "tokenizer": None}})  # latents are not pixels
    with pytest.raises(ConfigError, match="its tokenizer .VAE. is not this recipe's model.tokenizer") as info:
        TextToMediaTask(pixels).make_reflow_pairs(torch.device("cpu"))
    assert info.value.key == "flow.reflow.teacher"


def test_a_task_that_cannot_carry_reflow_pairs_refuses_them(tmp_path):
    from mmflow.config import ConfigError
    from mmflow.tasks import load_recipe
    from tests.conftest import REPO

    with pytest.raises(ConfigError, match="the digits_image task does not train on reflow pairs") as info:
        load_recipe(REPO / "recipes" / "digits_image.yaml", [f"flow.reflow.teacher={tmp_path}"])
    assert info.value.key == "flow.reflow" and info.value.source.endswith("digits_image.yaml")


def test_text_whitening_is_measured_at_the_start_kept_on_resume_and_sampled_with(tmp_path, fresh_accelerate, caplog,
                                                                                  monkeypatch):
    import logging

    from mmflow.model_io import load_model
    from mmflow.pipeline import FlowPipeline
    from mmflow.tasks.flow_task import VELOCITY
    from mmflow.text.whitening import fit_whitening
    from mmflow.train.init_from import init_from

    folder = _folder(tmp_path / "media")
    plain = _recipe(tmp_path, folder, None, use_cache="off")
    _train(plain, tmp_path / "plain")
    raw = _raw_recipe(tmp_path, folder, None, use_cache="off")
    raw["model"]["mmdit"]["text_whitening"] = True
    raw["train"].update(init_from=str(tmp_path / "plain"), checkpoint_every=2, max_steps=4)
    recipe = recipe_from_dict(raw, source="test")

    # the statistics are those of the training captions' real tokens (8 items: each caption twice)
    task = TextToMediaTask(recipe)
    emb = task.encoders.encode_prompts([CAPTIONS[i % 4] for i in range(8)])
    want = fit_whitening(emb.tokens[emb.mask])
    models = task.build_models()
    init_from(models, tmp_path / "plain")
    monkeypatch.setattr(logging.getLogger("mmflow"), "propagate", True)  # the trainer keeps it to its own handler
    with caplog.at_level(logging.INFO, logger="mmflow.tasks"):
        task.start_models(models, torch.device("cpu"))
    assert f"text whitening: measured on {want.count} token states of 8 training captions (the context embedder " \
           "keeps init_from's function)" in caplog.text
    velocity, before = models[VELOCITY].eval(), load_model(tmp_path / "plain" / "model" / "models" / "velocity").eval()
    torch.testing.assert_close(velocity.text_whiten, want.matrix)
    torch.testing.assert_close(velocity.text_mean, want.mean)
    g = torch.Generator().manual_seed(0)
    cond = {**emb.as_condition(), "text": emb.tokens}
    x, t = torch.randn(8, 3, 16, 16, generator=g), torch.rand(8, generator=g)
    with torch.no_grad():  # init_from a model without whitening: it starts as the one loaded
        torch.testing.assert_close(velocity(x, t, cond), before(x, t, cond), atol=1e-5, rtol=1e-4)

    # through the trainer: saved with the checkpoint and the export, kept (not measured again) on --resume
    run = tmp_path / "whitened"
    _train(recipe, run)
    first = load_file(str(run / "model" / "models" / "velocity" / "model.safetensors"))
    torch.testing.assert_close(first["text_whiten"], want.matrix)
    assert int(first["text_whiten_count"]) == want.count
    import shutil

    shutil.rmtree(run / "model")
    shutil.rmtree(run / "checkpoints" / "step_00000004")
    task = TextToMediaTask(recipe)
    task.start_models = lambda *a: pytest.fail("a resumed run measured its whitening again")  # type: ignore[method-assign]
    Trainer(recipe, task, run, resume=True, accelerator=make_accelerator(recipe.train, run)).train()
    again = load_file(str(run / "model" / "models" / "velocity" / "model.safetensors"))
    assert torch.equal(again["text_whiten"], first["text_whiten"])
    for k in first:
        torch.testing.assert_close(again[k], first[k], msg=k)  # resumed at step 2: the same weights at step 4

    # sampling applies them: the context embedder reads the prompt's tokens whitened (padding zeroed after)
    pipe = FlowPipeline.from_pretrained(run / "model")
    seen: list[torch.Tensor] = []
    pipe.velocity.context_embedder.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    pipe([CAPTIONS[0]], seed=0)
    one = task.encoders.encode_prompts([CAPTIONS[0]])
    expected = torch.where(one.mask[..., None], want.apply(one.tokens), 0.0)  # (1, S, D)
    assert seen and all(any(torch.allclose(row, expected[0], atol=1e-4) for row in batch) for batch in seen)


def test_init_from_a_model_that_learnt_on_other_text_tokens_is_warned_about(tmp_path, fresh_accelerate, caplog,
                                                                          monkeypatch):
    import logging

    folder = _folder(tmp_path / "media", n=4)
    _train(_recipe(tmp_path, folder, None, use_cache="off"), tmp_path / "plain")
    monkeypatch.setattr(logging.getLogger("mmflow"), "propagate", True)  # the trainer keeps it to its own handler

    def start(**encoder) -> str:
        raw = _raw_recipe(tmp_path, folder, None, use_cache="off")
        raw["model"]["text"]["encoders"][0].update(encoder)
        raw["train"]["init_from"] = str(tmp_path / "plain")
        task = TextToMediaTask(recipe_from_dict(raw, source="test"))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mmflow.tasks"):
            task.start_models(task.build_models(), torch.device("cpu"))
        return caplog.text

    assert "other text tokens" not in start(dropout=0.5)  # dropout changes no embedding
    text = start(layer=3, max_length=12)
    assert f"train.init_from {tmp_path / 'plain'} learnt on other text tokens than model.text gives (encoders[0]." \
           "max_length: 8 there, 12 here; encoders[0].layer: 'last' there, 3 here)" in text
