"""FlowPipeline and `mmflow sample` on text-to-media models of each modality, moved away from their run.

Each model is a 3-step text_to_media run (image: latents of a small test VAE; video: pixels; audio:
waveform) whose model/ export is moved to a new folder while the run, the media and the tokenizer
folder are deleted: what samples afterwards holds everything it needs.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
from media_factory import noisy_frames, sine, write_audio, write_image, write_mp4  # noqa: E402

from mmflow.config import ConfigError  # noqa: E402
from mmflow.modalities import get_modality  # noqa: E402
from mmflow.model_io import save_model  # noqa: E402
from mmflow.models.compile import is_compiled  # noqa: E402
from mmflow.pipeline import FlowPipeline, OutputExists  # noqa: E402
from mmflow.sampling.layout import WrongOutputRequest  # noqa: E402
from mmflow.tasks import recipe_from_dict  # noqa: E402
from mmflow.tasks.text_to_media import TextToMediaTask  # noqa: E402
from mmflow.text.default import TextEncoderNotFound  # noqa: E402
from mmflow.tokenizers import ImageVAE, image_vae_config  # noqa: E402
from mmflow.train.trainer import Trainer, make_accelerator  # noqa: E402

PROMPTS = ["a red square", "a green circle"]
MEDIA = {  # data section, patch size, whether a tokenizer (the test VAE) is used
    "image": ({"modality": "image", "size": 16}, [2, 2], True),
    "video": ({"modality": "video", "frames": 4, "size": 16, "fps": 8.0}, [2, 4, 4], False),
    "audio": ({"modality": "audio", "sample_rate": 8000, "seconds": 0.25}, [50], False),
}
SHAPES = {"image": (3, 16, 16), "video": (3, 4, 16, 16), "audio": (1, 2000)}


def _text_fixtures():
    """tests/text/conftest.py as a module (its tiny random encoders), without clashing with our conftest."""
    spec = importlib.util.spec_from_file_location("text_fixtures", Path(__file__).parent / "text" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _media(folder: Path, modality: str) -> Path:
    rows = []
    for i in range(4):
        name = f"{i}." + {"image": "png", "video": "mp4", "audio": "wav"}[modality]
        if modality == "image":
            write_image(folder / name, np.full((16, 16, 3), 60 * i, np.uint8))
        elif modality == "video":
            write_mp4(folder / name, noisy_frames(6, 32, 32, seed=i))
        else:
            write_audio(folder / name, sine(0.5, 8000, freq=220.0 * (i + 1)), 8000)
        rows.append({"file_name": name, "text": PROMPTS[i % 2]})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _train(root: Path, modality: str, encoder: dict | None = None) -> Path:
    """Train a 3-step run under root, move its model/ to root/moved and delete everything else; -> moved."""
    data, patch, tokenizer = MEDIA[modality]
    vae = None
    if tokenizer:
        torch.manual_seed(0)
        vae = save_model(ImageVAE(image_vae_config("test", latent_channels=4)), root / "vae")
    raw = {"name": "t2m", "task": "text_to_media", "seed": 0, "run_dir": str(root / "run"),
           "data": {"path": str(_media(root / "media", modality)), "use_cache": "off", "eval_per_prompt": 1, **data},
           "model": {"tokenizer": None if vae is None else str(vae),
                     "text": {"encoders": [encoder or {"path": "minilm", "max_length": 8}]},
                     "mmdit": {"preset": "test", "patch_size": patch}},
           "flow": {"cfg_dropout": 0.2},
           "train": {"batch_size": 4, "max_steps": 3, "lr": 1e-3, "log_every": 1, "checkpoint_every": 3,
                     "trackers": [], "ema_decay": None},
           "sample": {"steps": 2, "num_samples": 2, "guidance": 2.0, "solver": "euler"}}
    recipe = recipe_from_dict(raw, source="test")
    Trainer(recipe, TextToMediaTask(recipe), root / "run", accelerator=make_accelerator(recipe.train, root / "run")).train()
    moved = Path(shutil.move(str(root / "run" / "model"), str(root / "moved")))
    for gone in ("run", "media", "vae"):
        shutil.rmtree(root / gone, ignore_errors=True)
    return moved


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """modality -> an exported model folder whose run, media and tokenizer folder are gone (trained once)."""
    folders: dict[str, Path] = {}

    def get(modality: str) -> Path:
        if modality not in folders:
            folders[modality] = _train(tmp_path_factory.mktemp(modality), modality)
        return folders[modality]

    return get


@pytest.fixture(params=list(MEDIA))
def moved(request, exported) -> tuple[str, Path]:
    """(modality, its exported model folder), for each modality."""
    return request.param, exported(request.param)


def _decoded(path: Path, modality: str) -> tuple[np.ndarray, dict]:
    """A written sample read back with Pillow / PyAV / soundfile: (array, facts)."""
    if modality == "image":
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB")), {"size": im.size}
    if modality == "video":
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
            return frames, {"fps": float(stream.average_rate), "frames": len(frames)}
    wave, rate = sf.read(str(path))
    return wave, {"rate": rate}


def test_the_moved_model_samples_writes_decodable_files_and_is_seeded(moved, tmp_path) -> None:
    modality, folder = moved
    pipe = FlowPipeline.from_pretrained(folder)
    assert set(pipe.components) >= {"velocity", "text"} and ("tokenizer" in pipe.components) == (modality == "image")
    out = pipe(PROMPTS, num_per_prompt=2, seed=3)
    assert out.media.shape == (4, *SHAPES[modality]) and out.media.abs().max() <= 1
    assert out.inputs == [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2 and out.seeds == [3, 4, 5, 6]
    assert torch.equal(out.media, pipe(PROMPTS, num_per_prompt=2, seed=3).media)  # same seed: bit for bit
    assert not torch.equal(out.media, pipe(PROMPTS, num_per_prompt=2, seed=4).media)

    files = pipe.save(out, tmp_path / "s")
    spec = get_modality(modality)
    items = [tmp_path / "s" / f"sample_{i:04d}{spec.suffix}" for i in range(4)]
    assert files[:4] == items and (tmp_path / "s" / "samples.png").stat().st_size > 100
    array, facts = _decoded(items[2], modality)
    if modality == "image":
        assert facts["size"] == (16, 16) and array.shape == (16, 16, 3)
    elif modality == "video":
        assert facts == {"fps": 8.0, "frames": 4} and array.shape == (4, 16, 16, 3)
    else:
        assert facts["rate"] == 8000 and array.shape == (2000,)
        np.testing.assert_allclose(array, out.media[2, 0].numpy(), atol=1 / 2**14)  # 16-bit PCM
    meta = spec.read_metadata(items[2])
    assert meta["prompt"] == PROMPTS[1] and str(meta["seed"]) == "5" and meta["model"] == pipe.fingerprint
    assert meta["solver"] == "euler" and str(meta["steps"]) == "2"
    index = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert [s["seed"] for s in index["samples"]] == [3, 4, 5, 6] and index["settings"]["guidance"] == 2.0
    with pytest.raises(OutputExists, match="sample_0000"):  # earlier samples are never overwritten silently
        pipe.save(out, tmp_path / "s")


def test_the_sample_command_on_the_moved_model_is_reproducible(moved, tmp_path) -> None:
    modality, folder = moved
    runs = []
    for name, flag, note in (("a", [], "eager (compile: auto, off on cpu"), ("b", ["--no-compile"], "eager (compile: false)")):
        done = subprocess.run([sys.executable, "-m", "mmflow", "sample", str(folder), "num_samples=1", "seed=7",
                               "--prompt", PROMPTS[0], "--out", str(tmp_path / name), *flag], capture_output=True,
                              text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr
        assert f"[mmflow] compile: {note}" in done.stderr
        summary = json.loads(done.stdout)
        assert summary["samples"] == 1 and summary["inputs"] == [PROMPTS[0]]
        runs.append(_decoded(tmp_path / name / f"sample_0000{get_modality(modality).suffix}", modality)[0])
    np.testing.assert_array_equal(runs[0], runs[1])


def test_asking_for_what_the_model_cannot_make_names_what_it_is(moved) -> None:
    modality, folder = moved
    pipe = FlowPipeline.from_pretrained(folder)
    wrong = {"image": {"num_frames": 8}, "video": {"seconds": 2.0}, "audio": {"size": 32}}[modality]
    what = {"image": "image 3x16x16", "video": "video of 4 frames", "audio": "audio 0.25 s at 8000 Hz"}[modality]
    with pytest.raises(WrongOutputRequest, match=f"{next(iter(wrong))} does not apply: this model makes {what}"):
        pipe(PROMPTS[0], **wrong)
    for bad, named in (({"steps": 0}, "sample.steps"), ({"solver": "magic"}, "'euler'"),
                       ({"guidance": float("nan")}, "sample.guidance"), ({"num_per_prompt": 0}, "num_per_prompt")):
        with pytest.raises((ConfigError, WrongOutputRequest), match=named):
            pipe(PROMPTS[0], **bad)
    with pytest.raises(WrongOutputRequest, match="give prompts"):
        pipe(labels=[1])


def test_another_output_size_where_the_modality_allows(moved) -> None:
    modality, folder = moved
    pipe = FlowPipeline.from_pretrained(folder)
    asked, shape = {"image": ({"size": 32}, (3, 32, 32)), "video": ({"num_frames": 6, "size": 32}, (3, 6, 32, 32)),
                    "audio": ({"seconds": 0.5}, (1, 4000))}[modality]
    assert pipe(PROMPTS[0], **asked).media.shape == (1, *shape)
    bad = {"image": {"size": 18}, "video": {"size": 18}, "audio": {"seconds": 0.26}}[modality]
    with pytest.raises(WrongOutputRequest, match="do not divide"):
        pipe(PROMPTS[0], **bad)


def test_cfg_is_one_forward_of_2b_rows_and_the_empty_negative_prompt_is_the_null(exported) -> None:
    pipe = FlowPipeline.from_pretrained(exported("image"))  # one modality: the loop is shared
    rows: list[int] = []
    hook = pipe.velocity.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    try:
        guided = pipe(PROMPTS, num_per_prompt=3, steps=2, guidance=3.0)  # euler: one evaluation per step
        assert rows == [12, 12]  # 2 steps x one call on [null; cond] of 2 x 6 rows
        rows.clear()
        pipe(PROMPTS, num_per_prompt=3, steps=2, guidance=1.0)
        assert rows == [6, 6]  # w = 1: the conditional rows only
    finally:
        hook.remove()
    # the recipe's null is the empty prompt's encoding, so an empty negative prompt changes nothing
    same = pipe(PROMPTS, num_per_prompt=3, steps=2, guidance=3.0, negative_prompt="")
    torch.testing.assert_close(same.media, guided.media, atol=1e-5, rtol=0)
    other = pipe(PROMPTS, num_per_prompt=3, steps=2, guidance=3.0, negative_prompt="a green circle")
    # a 3-step model barely listens to text, so only ask that a real negative prompt moves the samples more
    assert (other.media - guided.media).abs().max() > 10 * (same.media - guided.media).abs().max() + 1e-7


def test_a_long_prompt_is_truncated_with_a_warning_naming_the_limit(exported, caplog) -> None:
    pipe = FlowPipeline.from_pretrained(exported("audio"))  # one modality: the text side is shared
    long = "a red square " * 6
    with caplog.at_level(logging.WARNING):
        pipe([long, PROMPTS[0]])
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "takes 8" in warnings[0] and "truncated to 8" in warnings[0]


def test_a_compiled_pipeline_samples_like_the_eager_one(exported, monkeypatch) -> None:
    import torch._dynamo
    from torch._dynamo.utils import counters

    # aot_eager: seconds instead of the inductor's C++ build (tests/models/test_compile.py compares its kernels)
    monkeypatch.setattr("mmflow.models.compile.BACKEND", "aot_eager")
    torch._dynamo.reset()
    counters.clear()
    folder = exported("image")  # the one with a tokenizer: its decoder is compiled too
    eager = FlowPipeline.from_pretrained(folder)  # compile "auto" on a CPU: eager
    assert not is_compiled(eager.velocity) and "off on cpu" in eager.compile_note
    compiled = FlowPipeline.from_pretrained(folder, compile=True)
    assert is_compiled(compiled.velocity) and is_compiled(compiled.task.frozen_models()["tokenizer"].decoder)
    assert compiled.compile_note == ("compile: velocity (MMDiT) and tokenizer decoder compiled, on the first call "
                                     "(compile: true)")  # logged, and printed by `mmflow sample`
    a, b = eager(PROMPTS, seed=3, steps=3), compiled(PROMPTS, seed=3, steps=3)
    torch.testing.assert_close(b.media, a.media, atol=1e-5, rtol=0)  # decomposed ops: float rounding only
    assert counters["stats"]["unique_graphs"] == 2  # the MM-DiT once for all 3 steps, the decoder once
    compiled(PROMPTS[::-1], seed=4, steps=3)
    assert counters["stats"]["unique_graphs"] == 2  # another call of the same shapes: nothing recompiles
    torch._dynamo.reset()


def test_save_pretrained_round_trips(exported, tmp_path) -> None:
    pipe = FlowPipeline.from_pretrained(exported("image"))  # the one with a tokenizer to carry along
    again = FlowPipeline.from_pretrained(pipe.save_pretrained(tmp_path / "copy"))
    assert (tmp_path / "copy" / "models" / "tokenizer" / "config.json").is_file()
    assert torch.equal(again(PROMPTS, seed=1).media, pipe(PROMPTS, seed=1).media)


def test_the_export_command_ships_float16_weights_that_sample_like_the_float32_ones(exported, tmp_path) -> None:
    src = exported("image")
    cmd = [sys.executable, "-m", "mmflow", "export", str(src), str(tmp_path / "half"), "--dtype", "float16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "float16" in done.stdout and (tmp_path / "half" / "models" / "tokenizer" / "config.json").is_file()
    full = (src / "models" / "velocity" / "model.safetensors").stat().st_size  # no EMA in this run
    half = (tmp_path / "half" / "models" / "velocity" / "model.safetensors").stat().st_size
    assert half < 0.6 * full
    pipe, again = FlowPipeline.from_pretrained(src), FlowPipeline.from_pretrained(tmp_path / "half")
    assert next(again.velocity.parameters()).dtype == torch.float32  # stored half, computed in float32
    a, b = pipe(PROMPTS, seed=1).media, again(PROMPTS, seed=1).media
    assert not torch.equal(a, b) and (a - b).abs().max() < 0.05
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)  # never overwrites silently
    assert refused.returncode == 2 and "already exists" in refused.stderr


# ------------------------------------------------------------------ local text encoders: copied or referenced
@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return _text_fixtures().save_bert(tmp_path_factory.mktemp("enc") / "tiny_bert", words=["a", "red", "green", "square", "circle"])


def test_a_local_text_encoder_is_copied_into_the_export(bert, tmp_path) -> None:
    source = Path(shutil.copytree(bert, tmp_path / "bert"))
    folder = _train(tmp_path, "audio", {"path": str(source), "max_length": 6})
    shutil.rmtree(source)
    assert (folder / "models" / "text_encoders" / "bert" / "config.json").is_file()
    assert FlowPipeline.from_pretrained(folder)(PROMPTS).media.shape == (2, 1, 2000)


def test_a_referenced_text_encoder_is_checked_and_can_be_pointed_elsewhere(bert, tmp_path) -> None:
    source = Path(shutil.copytree(bert, tmp_path / "bert"))
    folder = _train(tmp_path, "audio", {"path": str(source), "max_length": 6, "export": "reference"})
    assert not (folder / "models" / "text_encoders").exists()
    want = FlowPipeline.from_pretrained(folder)(PROMPTS).media
    moved = Path(shutil.move(str(source), str(tmp_path / "elsewhere")))
    with pytest.raises(TextEncoderNotFound) as missing:
        FlowPipeline.from_pretrained(folder)
    for named in ("'bert'", str(source), "--text-encoder bert=", "text_encoders="):
        assert named in str(missing.value), (named, str(missing.value))
    got = FlowPipeline.from_pretrained(folder, text_encoders={"bert": str(moved)})(PROMPTS).media
    assert torch.equal(got, want)
    _text_fixtures().save_bert(moved, seed=1, words=["a", "red", "green", "square", "circle"])  # other weights
    with pytest.raises(TextEncoderNotFound, match="changed"):
        FlowPipeline.from_pretrained(folder, text_encoders={"bert": str(moved)})
    done = subprocess.run([sys.executable, "-m", "mmflow", "sample", str(folder), "--out", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2 and "Traceback" not in done.stderr and "--text-encoder bert=" in done.stderr
