"""`mmflow train` / `mmflow prepare` on a media folder whose metadata names files it must not use.

Run as a user runs them (a subprocess in a scratch folder): rows outside the folder, absolute, or of
another extension are never trained on, and the run says so (warning, summary, metrics); a folder
left with nothing, or a malformed metadata file, is one clean error line, never a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from media_factory import write_image, write_jsonl, write_text_file

from mmflow.config import dump_yaml
from mmflow.tasks import recipe_from_dict

DROPPED = [("../outside/x.png", "outside folder"), ("sub/../../x.png", "outside folder"),
           ("notes.txt", "other extension")]  # plus the absolute path of outside/x.png


def _folder(tmp_path: Path) -> tuple[Path, str]:
    """data/ with 4 good images, a symlink to an image outside, and 4 rows that must be dropped."""
    root = tmp_path / "data"
    outside = write_image(tmp_path / "outside" / "x.png", np.zeros((16, 16, 3), np.uint8))
    write_image(tmp_path / "x.png", np.zeros((16, 16, 3), np.uint8))
    rows = []
    for k in range(4):
        write_image(root / f"{k}.png", np.full((16, 16, 3), 60 * k, np.uint8))
        rows.append({"file_name": f"{k}.png", "text": f"grey {k}"})
    (root / "link.png").symlink_to(outside)
    rows.append({"file_name": "link.png", "text": "linked by the user"})
    write_text_file(root / "notes.txt")
    rows += [{"file_name": name, "text": "must not train"} for name, _ in DROPPED]
    rows.append({"file_name": str(outside), "text": "must not train"})
    write_jsonl(root / "metadata.jsonl", rows)
    return root, str(outside)


def _recipe_file(tmp_path: Path, data: Path, **extra) -> Path:
    recipe = recipe_from_dict({
        "name": "dropped", "task": "text_to_media", "seed": 0, "run_dir": str(tmp_path / "run"),
        "data": {"path": str(data), "modality": "image", "size": 16, "eval_prompts": ["grey 1"],
                 "eval_per_prompt": 1, "use_cache": "off", "cache": str(tmp_path / "cache"), **extra},
        "model": {"tokenizer": None, "text": {"encoders": [{"path": "minilm", "max_length": 8}]},
                  "mmdit": {"preset": "test", "depth": 1, "patch_size": [4, 4]}},
        "train": {"batch_size": 4, "max_steps": 2, "log_every": 1, "checkpoint_every": 2, "trackers": [],
                  "ema_decay": None, "device": "cpu"},
        "sample": {"steps": 2, "num_samples": 1},
    }, source="test")
    path = tmp_path / "recipe.yaml"
    dump_yaml(recipe, path)
    return path


def _mmflow(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "mmflow", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def _assert_names_every_dropped_row(text: str, absolute: str) -> None:
    (head,) = {line[line.index("dropped rows:"):] for line in text.splitlines() if "dropped rows:" in line}
    assert head.startswith("dropped rows: 4 metadata row(s) not used as items (")
    assert all(count in head for count in ("outside folder 2", "absolute path 1", "other extension 1"))
    for name, why in [*DROPPED, (absolute, "absolute path")]:
        assert f"{name}: {why}:" in text, f"{name} ({why}) not named in:\n{text}"


def test_train_skips_rows_outside_the_folder_and_reports_them(tmp_path):
    data, absolute = _folder(tmp_path)
    recipe = _recipe_file(tmp_path, data)
    run = _mmflow(tmp_path, "train", str(recipe))
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "Traceback" not in out
    assert "dropped rows: 4 metadata rows were not used as items" in run.stdout  # the closing report
    log = (tmp_path / "run" / "train.log").read_text()
    _assert_names_every_dropped_row(log, absolute)  # the warning at start and the end-of-run summary
    assert log.count("dropped rows: 4 metadata row(s)") == 2
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["dropped_rows"] == 4 and metrics["bad_items"] == 0  # not bad media: never items


def test_prepare_reports_dropped_rows_and_caches_only_the_folder(tmp_path):
    data, absolute = _folder(tmp_path)
    recipe = _recipe_file(tmp_path, data)
    run = _mmflow(tmp_path, "prepare", str(recipe), "data.use_cache=auto")
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "Traceback" not in out
    assert "5 items cached, 0 bad items skipped" in run.stdout  # 4 images and the user's symlink
    _assert_names_every_dropped_row(run.stderr, absolute)
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    assert sorted(index["describe"]["files"]) == ["0.png", "1.png", "2.png", "3.png", "link.png"]


def test_a_folder_whose_rows_are_all_dropped_is_one_clean_error(tmp_path):
    write_image(tmp_path / "outside" / "x.png", np.zeros((16, 16, 3), np.uint8))
    write_jsonl(tmp_path / "data" / "metadata.jsonl", [{"file_name": "../outside/x.png", "text": "out"}])
    recipe = _recipe_file(tmp_path, tmp_path / "data")
    run = _mmflow(tmp_path, "train", str(recipe))
    assert run.returncode == 2, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("mmflow train: error:")]
    assert len(errors) == 1, run.stderr
    assert "no image files" in errors[0] and f"found under {tmp_path / 'data'} (1 metadata row(s) dropped" in errors[0]
    assert "../outside/x.png: outside folder" in run.stderr  # the warning above it names the row
