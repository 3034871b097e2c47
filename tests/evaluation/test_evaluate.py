"""Tests for mmflow/evaluation/evaluate.py and run.py (`mmflow eval`): scores with known answers, the
real-side cache, refusals that name what is wrong, and a model sampled on one and on two processes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from media_factory import sine, write_audio, write_image  # noqa: E402

from launched import run_launched  # noqa: E402
from mmflow.cli import main  # noqa: E402
from mmflow.evaluation.config import EvalConfig  # noqa: E402
from mmflow.evaluation.evaluate import Evaluator  # noqa: E402
from mmflow.evaluation.media_sets import MediaSetError, load_media_set  # noqa: E402
from mmflow.evaluation.run import evaluate_folders, shard  # noqa: E402
from mmflow.metrics.errors import NotEnoughSamples  # noqa: E402

N = 210  # > 198 + 1: the "pixels" features' full-rank covariance


def _folder(root: Path, n: int = N, seed: int = 0, bright: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        write_image(root / f"{i:03d}.png", np.clip(rng.integers(0, 200, (8, 8, 3)) + bright, 0, 255).astype(np.uint8))
        rows.append({"file_name": f"{i:03d}.png", "text": f"noise {i % 3}"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sets")
    return {"real": _folder(root / "real", seed=0), "same": _folder(root / "same", seed=0),
            "other": _folder(root / "other", seed=1), "brighter": _folder(root / "brighter", seed=2, bright=55)}


def _score(real: Path, fake: Path, tmp_path: Path, **cfg) -> dict[str, float]:
    config = EvalConfig(metrics=["fd", "precision_recall", "density_coverage"], **cfg)
    return evaluate_folders(str(real), str(fake), config, tmp_path / "eval.json", cache_dir=tmp_path / "cache",
                            progress=False).report.metrics


def test_identical_sets_score_perfectly_and_a_shift_is_seen(sets, tmp_path) -> None:
    same = _score(sets["real"], sets["same"], tmp_path)
    assert same["fd"] == pytest.approx(0.0, abs=1e-6) and same["precision"] == same["recall"] == 1.0
    assert same["coverage"] == 1.0
    other = _score(sets["real"], sets["other"], tmp_path)  # a fresh draw of the same distribution
    brighter = _score(sets["real"], sets["brighter"], tmp_path)  # every pixel shifted by 55/255
    assert 0 < other["fd"] < brighter["fd"] / 2  # 210 items in 198 dims: the estimate carries a large bias
    assert brighter["precision"] < 0.2 and brighter["coverage"] < 0.2 < other["coverage"]
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written["metrics"] == brighter and written["num_real"] == written["num_fake"] == N


def test_real_features_are_cached_by_contents_and_extractor(sets, tmp_path, caplog) -> None:
    _score(sets["real"], sets["other"], tmp_path)
    assert len(list((tmp_path / "cache").iterdir())) == 1
    with caplog.at_level(logging.INFO, logger="mmflow.evaluation"):
        again = _score(sets["real"], sets["other"], tmp_path)
    assert any("from the cache" in r.getMessage() for r in caplog.records)
    assert again == _score(sets["real"], sets["other"], tmp_path / "fresh")  # the cache changes nothing
    _score(sets["real"], sets["other"], tmp_path, features="pixels")  # the same extractor as auto: same key
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_too_few_samples_for_the_metric_are_named(sets, tmp_path) -> None:
    small = _folder(tmp_path / "small", n=20)
    with pytest.raises(NotEnoughSamples, match=r"20.*199"):
        _score(sets["real"], small, tmp_path)
    # the escape hatch for a quick look, and the k-NN metrics that need only k + 1 items
    assert _score(sets["real"], small, tmp_path, allow_rank_deficient=True)["fd"] > 0


def test_mismatched_modalities_are_refused(sets, tmp_path) -> None:
    write_audio(tmp_path / "audio" / "a.wav", sine(0.2, 8000), 8000)
    with pytest.raises(MediaSetError, match="holds no image files"):
        _score(tmp_path / "audio", sets["real"], tmp_path)  # the real side is read as the fake side's modality
    with pytest.raises(Exception, match="reads image media, but the media to evaluate are audio"):
        Evaluator(EvalConfig(metrics=["fd"], features="pixels"), "audio")


def test_clip_score_needs_prompts_and_a_clip_folder(sets, tmp_path) -> None:
    from mmflow.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match="eval.clip"):
        from_dict(EvalConfig, {"metrics": ["clip_score"]}, prefix="eval")
    with pytest.raises(ConfigError, match=r"unknown metric\(s\) \['fid'\]"):
        from_dict(EvalConfig, {"metrics": ["fid"]}, prefix="eval")


def test_shards_cover_every_row_once() -> None:
    for n, world in ((10, 3), (7, 2), (1, 4)):
        rows = [i for r in range(world) for i in range(*shard(n, r, world))]
        assert rows == list(range(n))


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mmflow", "eval", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_the_command_prints_a_table_writes_json_and_refuses_cleanly(sets, tmp_path) -> None:
    done = _run("--real", str(sets["real"]), "--fake", str(sets["other"]), "--metrics", "fd,precision_recall",
                "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "r.json"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "fd" in done.stdout and "precision" in done.stdout and str(tmp_path / "r.json") in done.stdout
    assert set(json.loads((tmp_path / "r.json").read_text())["metrics"]) == {"fd", "precision", "recall"}
    (tmp_path / "empty").mkdir()
    for args, named in ((["--real", str(sets["real"]), "--fake", str(tmp_path / "empty")], "holds no media files"),
                        (["--fake", str(sets["other"]), "--metrics", "fid"], "unknown metric"),
                        (["--fake", str(sets["other"])], "--real"),
                        (["--real", str(sets["real"]), "--fake", str(sets["other"]), "--features", "inception",
                          "--features-path", str(tmp_path / "absent.pth")], "absent.pth")):
        out = _run(*args, cwd=tmp_path)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert named in out.stderr and out.stderr.startswith("mmflow eval: error:"), out.stderr


@pytest.fixture(scope="module")
def image_model(tmp_path_factory) -> Path:
    from test_pipeline_media import _train  # a 3-step image model, exported and moved

    return _train(tmp_path_factory.mktemp("model"), "image")


@pytest.mark.slow
def test_a_model_scores_the_same_on_one_and_on_two_processes(image_model, sets, tmp_path) -> None:
    common = ["--num", "9", "--real", str(sets["real"]), "--metrics", "precision_recall,density_coverage",
              "--device", "cpu", "--cache", str(tmp_path / "c"), "steps=2"]
    one = _run(str(image_model), *common, "--out", str(tmp_path / "one.json"), cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--main_process_port", str(_free_port()), "-m", "mmflow", "eval", str(image_model), *common,
              "--out", str(tmp_path / "two.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    two = run_launched(launch, cwd=tmp_path, timeout=600, env=env)
    assert two.returncode == 0, two.stderr
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert b["processes"] == 2 and a["processes"] == 1 and a["num_fake"] == b["num_fake"] == 9
    for k, v in a["metrics"].items():
        assert b["metrics"][k] == pytest.approx(v, abs=1e-6), k


def test_a_model_without_a_real_folder_is_refused_before_sampling(image_model, tmp_path, monkeypatch) -> None:
    from mmflow.evaluation.run import evaluate_model
    from mmflow.pipeline import FlowPipeline

    def sample(*args, **kwargs):
        raise AssertionError("sampled before the metrics were checked")

    monkeypatch.setattr(FlowPipeline, "__call__", sample)
    with pytest.raises(MediaSetError, match="fd compare with real media: give a real folder"):
        evaluate_model(str(image_model), EvalConfig(metrics=["fd"]), tmp_path / "r.json", num=2, device="cpu")
    assert not (tmp_path / "r.json").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_generated_tensors_score_like_their_folder(sets, tmp_path) -> None:
    fake = load_media_set(sets["other"])
    media = torch.cat([x for x, _ in fake.batches(64)])
    evaluator = Evaluator(EvalConfig(metrics=["fd", "precision_recall"]), "image")
    from_folder = evaluator.score_sets(load_media_set(sets["real"]), fake).metrics
    from_tensors = evaluator.score_media(media, fake.captions, load_media_set(sets["real"])).metrics
    assert from_tensors == pytest.approx(from_folder)
    assert main(["eval", "--fake", str(sets["other"]), "--metrics", "fd", "--real", str(sets["real"]),
                 "--no-cache", "--out", str(tmp_path / "x.json")]) == 0


def test_training_validation_reports_the_recipes_eval_metrics(tmp_path) -> None:
    from test_pipeline_media import _media

    from mmflow.tasks import recipe_from_dict
    from mmflow.tasks.text_to_media import TextToMediaTask
    from mmflow.train.trainer import Trainer, make_accelerator

    raw = {"name": "q", "task": "text_to_media", "run_dir": str(tmp_path / "run"),
           "data": {"path": str(_media(tmp_path / "media", "image")), "modality": "image", "size": 16,
                    "use_cache": "off", "eval_per_prompt": 1},
           "model": {"text": {"encoders": [{"path": "minilm", "max_length": 8}]},
                     "mmdit": {"preset": "test", "patch_size": [2, 2]}},
           "train": {"batch_size": 4, "max_steps": 2, "checkpoint_every": 2, "trackers": [], "ema_decay": None},
           "sample": {"steps": 2, "solver": "euler"},
           "eval": {"metrics": ["precision_recall", "density_coverage"], "num_samples": 6, "batch_size": 4,
                    "k_density_coverage": 2, "k_precision_recall": 2}}
    with pytest.raises(NotEnoughSamples, match=r"density_coverage needs at least 6 real items.*there are 4"):
        too_big = recipe_from_dict({**raw, "eval": {**raw["eval"], "k_density_coverage": 5}}, source="test")
        TextToMediaTask(too_big).build_dataset()  # refused before any training step
    recipe = recipe_from_dict(raw, source="test")
    result = Trainer(recipe, TextToMediaTask(recipe), tmp_path / "run",
                     accelerator=make_accelerator(recipe.train, tmp_path / "run")).train()
    got = {k: v for k, v in result.metrics.items() if k.startswith("eval_")}
    assert set(got) == {"eval_precision", "eval_recall", "eval_density", "eval_coverage"}
    assert all(0 <= v for v in got.values()) and got["eval_recall"] <= 1
    # the small-noise check runs beside them (eval.stability_rows, 4 by default)
    assert all(result.metrics[f"stability_amp_{s}"] > 0 for s in ("1e-3", "1e-2", "1e-1"))
    written = json.loads((tmp_path / "run" / "validation" / "step_00000002" / "metrics.json").read_text())
    assert written["eval_recall"] == got["eval_recall"]
    assert list((tmp_path / "run" / "eval_cache").iterdir())  # the real side's features, for the next validation


def test_a_prompt_check_scores_each_item_against_its_own_prompt(tmp_path) -> None:
    from mmflow.data.shapes import ShapesConfig, write_shapes_folder

    real = write_shapes_folder(tmp_path / "test", ShapesConfig(n_test_two=8), split="test")
    cfg = EvalConfig(metrics=[], check="shapes")
    right = evaluate_folders(None, str(real), cfg, tmp_path / "a.json", progress=False).report.metrics
    assert right["shapes_all"] == right["shapes_two_all"] == 1.0  # the generator's own images: all right
    meta = real / "metadata.jsonl"
    rows = [json.loads(line) for line in meta.read_text().splitlines()]
    texts = [r["text"] for r in rows]
    half = len(texts) // 2
    for r, text in zip(rows, texts[half:] + texts[:half]):  # every image now carries another image's caption
        r["text"] = text
    meta.write_text("".join(json.dumps(r) + "\n" for r in rows))
    wrong = evaluate_folders(None, str(real), cfg, tmp_path / "b.json", progress=False).report.metrics
    assert wrong["shapes_all"] < 0.2 and wrong["shapes_two_all"] < 0.5


def test_the_report_keeps_each_items_reading(tmp_path) -> None:
    """eval.json's "items": per file, its prompt, what the probe read and which attributes were right, so a
    miss can be looked at (here: one image given another's caption is the one item read wrong)."""
    from mmflow.data.shapes import ShapesConfig, write_shapes_folder

    real = write_shapes_folder(tmp_path / "test", ShapesConfig(n_test_two=2), split="test")
    meta = real / "metadata.jsonl"
    rows = [json.loads(line) for line in meta.read_text().splitlines()]
    ones = [i for i, r in enumerate(rows) if r["kind"] == "one"]
    first = rows[ones[0]]["objects"][0]
    other = next(i for i in ones if all(rows[i]["objects"][0][k] != first[k] for k in ("colour", "shape")))
    rows[ones[0]]["text"] = rows[other]["text"]  # another colour and shape than the image shows
    meta.write_text("".join(json.dumps(r) + "\n" for r in rows))
    evaluate_folders(None, str(real), EvalConfig(metrics=[], check="shapes"), tmp_path / "e.json", progress=False)
    items = json.loads((tmp_path / "e.json").read_text())["items"]
    assert [it["file"] for it in items] == [r["file_name"] for r in rows]
    assert [it["prompt"] for it in items] == [r["text"] for r in rows]
    wrong = [it["file"] for it in items if not it["all" if it["kind"] == "one" else "two_all"]]
    assert wrong == [rows[ones[0]]["file_name"]], wrong
    assert items[ones[0]]["pred"] and isinstance(items[ones[0]]["pred"], dict)


def test_a_check_on_one_kind_of_prompt_leaves_the_other_kind_out_of_a_valid_report(tmp_path) -> None:
    """Only two-object prompts: no one-object accuracy exists; the report leaves those out (NaN is not JSON)."""
    from mmflow.data.shapes import ShapesConfig, write_shapes_folder

    real = write_shapes_folder(tmp_path / "test", ShapesConfig(n_test_two=8), split="test")
    meta = real / "metadata.jsonl"
    rows = [json.loads(line) for line in meta.read_text().splitlines()]
    meta.write_text("".join(json.dumps(r) + "\n" for r in rows if r["kind"] == "two"))
    for r in rows:
        if r["kind"] == "one":
            (real / r["file_name"]).unlink()
    result = evaluate_folders(None, str(real), EvalConfig(metrics=[], check="shapes"), tmp_path / "two.json",
                              progress=False)
    assert result.report.metrics["shapes_two_all"] == 1.0
    assert not any(k in result.report.metrics for k in ("shapes_colour", "shapes_shape", "shapes_all"))
    assert json.loads((tmp_path / "two.json").read_text())["metrics"]["shapes_two_all"] == 1.0
