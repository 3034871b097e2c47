"""Recipe settings through `mmflow train` / `prepare` as a user runs them, from a temp working folder.

Non-finite numbers, YAML 1.1 words (`use_cache: off`), missing input paths and unsafe run folders
must each stop with exit code 2 and one line naming the file, key and value, before a run folder
(or anything else) is written. One case of each runs `python -m mmflow` in a subprocess; their
variants call `mmflow.cli.main` in-process (same code path, without ~5 s of imports each).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from mmflow.cli import main
from tests.conftest import REPO, SMALL_TOY

TOY = REPO / "recipes" / "toy2d.yaml"
MEDIA = REPO / "recipes" / "emoji_image.yaml"
FAST = [*SMALL_TOY, "train.max_steps=4", "train.checkpoint_every=4", "sample.num_samples=64"]


def run_cli(args: list[str | Path], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "mmflow", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> Callable[..., subprocess.CompletedProcess]:
    """cli(args, cwd): `mmflow.cli.main(args)` run in `cwd`, as a CompletedProcess like run_cli's."""

    def run(args: list[str | Path], cwd: Path) -> subprocess.CompletedProcess:
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        rc = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, rc, out, err)

    return run


def clean_error(done: subprocess.CompletedProcess, verb: str, *names: str) -> str:
    """The one error line, after checking exit code 2, no traceback, and that it names each of `names`."""
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output, output
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"mmflow {verb}: error: "), output
    for name in names:
        assert name in lines[0], f"{name!r} not in {lines[0]!r}"
    return lines[0]


def _media(folder: Path, edits: dict[str, str]) -> Path:
    text = MEDIA.read_text()
    for old, new in edits.items():
        assert old in text, old
        text = text.replace(old, new)
    path = folder / "recipe.yaml"
    path.write_text(text)
    return path


# --- 5: NaN and infinity ------------------------------------------------------------------------


def test_non_finite_guidance_in_a_file(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    path = tmp_path / "nan.yaml"
    path.write_text(TOY.read_text().replace("guidance: 1.0", "guidance: .nan"))
    assert "guidance: .nan" in path.read_text()
    clean_error(run_cli(["train", path, *FAST], work), "train", str(path),
                "sample.guidance: nan is not a finite number")
    assert list(work.iterdir()) == []  # no run folder


@pytest.mark.parametrize("recipe,override,key", [
    (TOY, "sample.guidance=nan", "sample.guidance"),
    (TOY, "train.lr=inf", "train.lr"),
    (TOY, "train.lr=.nan", "train.lr"),
    (TOY, "train.lr=1e999", "train.lr"),
    (TOY, "flow.time_sampler.m=-.inf", "flow.time_sampler.m"),
    (MEDIA, "data.max_bad_fraction=nan", "data.max_bad_fraction"),
])
def test_non_finite_setting_stops_before_any_work(cli, tmp_path: Path, recipe: Path, override: str, key: str) -> None:
    clean_error(cli(["train", recipe, override], tmp_path), "train", key, override, "not a finite number")
    assert list(tmp_path.iterdir()) == []  # no run folder


def test_negative_guidance_is_refused_and_zero_allowed(cli, tmp_path: Path) -> None:
    clean_error(cli(["train", TOY, "sample.guidance=-2", "--print-config"], tmp_path), "train",
                "sample.guidance", "-2.0", ">= 0")
    done = cli(["train", TOY, "sample.guidance=0", "--print-config"], tmp_path)
    assert done.returncode == 0 and json.loads(done.stdout)["sample"]["guidance"] == 0.0


# --- 6: YAML 1.1 words ----------------------------------------------------------------------------


def test_use_cache_off_as_the_readme_writes_it(cli, tmp_path: Path) -> None:
    path = _media(tmp_path, {"use_cache: auto": "use_cache: off"})
    done = run_cli(["train", path, "--print-config"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["data"]["use_cache"] == "off"
    done = cli(["train", MEDIA, "data.use_cache=off", "--print-config"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["data"]["use_cache"] == "off"


def test_yaml_1_1_bool_word_for_a_bool_setting_asks_for_true_or_false(cli, tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(TOY.read_text() + "\n")
    text = path.read_text().replace("conditional: true", "conditional: yes")
    assert text != path.read_text()
    path.write_text(text)
    clean_error(cli(["train", path, "--print-config"], tmp_path), "train", str(path), "data.conditional",
                "'yes'", "true or false")
    clean_error(cli(["train", TOY, "train.ema_warmup=on", "--print-config"], tmp_path), "train",
                "train.ema_warmup", "'on'", "true or false")


def test_scientific_notation_without_a_dot(cli, tmp_path: Path) -> None:
    done = cli(["train", TOY, "train.lr=3e-4", "--print-config"], tmp_path)
    assert done.returncode == 0 and json.loads(done.stdout)["train"]["lr"] == 3e-4
    clean_error(cli(["train", TOY, "train.max_steps=1e3", "--print-config"], tmp_path), "train",
                "train.max_steps", "write 1000")


# --- 7: input paths checked before any work -------------------------------------------------------


def test_missing_data_path_in_the_recipe_file(cli, tmp_path: Path) -> None:
    path = _media(tmp_path, {"path: ../shared/data/emoji64": "path: no_such_media"})
    line = clean_error(run_cli(["train", path], tmp_path), "train",
                       f"{path}: data.path: no such folder: no_such_media")
    assert str(tmp_path) in line  # relative to the working directory, which it names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]  # no run folder
    clean_error(cli(["prepare", path], tmp_path), "prepare", str(path), "data.path", "no_such_media")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]


def test_missing_data_path_from_an_override_names_file_and_override(cli, tmp_path: Path) -> None:
    clean_error(cli(["train", MEDIA, "data.path=gone"], tmp_path), "train",
                str(MEDIA), "data.path", "gone", "override 'data.path=gone'")
    assert list(tmp_path.iterdir()) == []


def test_missing_tokenizer_folder(cli, tmp_path: Path) -> None:
    (tmp_path / "media").mkdir()
    path = _media(tmp_path, {"path: ../shared/data/emoji64": "path: media", "tokenizer: null": "tokenizer: vae_gone"})
    clean_error(cli(["train", path], tmp_path), "train",
                f"{path}: model.tokenizer: no such folder: vae_gone", "mmflow convert diffusers-vae")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["media", "recipe.yaml"]
    clean_error(cli(["prepare", path], tmp_path), "prepare", "model.tokenizer", "vae_gone")


def test_print_config_does_not_need_the_inputs(cli, tmp_path: Path) -> None:
    # an exported model's pipeline.json holds its recipe, read on machines without its data
    assert cli(["train", MEDIA, "data.path=gone", "--print-config"], tmp_path).returncode == 0


# --- 10: run names and run folders ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../up", ".hidden", "/abs"])
def test_unsafe_name_is_refused(cli, tmp_path: Path, name: str) -> None:
    clean_error(cli(["train", TOY, *FAST, f"name={name}"], tmp_path), "train", "name", repr(name))
    assert list(tmp_path.iterdir()) == []


def test_name_dotdot_in_a_file_is_refused(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    path = tmp_path / "r.yaml"
    path.write_text(TOY.read_text().replace("name: toy2d", "name: .."))
    clean_error(run_cli(["train", path, *FAST], work), "train", str(path), "name: '..'")
    assert list(work.iterdir()) == []  # before the fix: checkpoints/, train.log, model/ ... right here


@pytest.mark.parametrize("how", [["--run-dir", "."], ["--run-dir", ".."], ["run_dir=."], ["run_dir=.."]])
def test_run_folder_may_not_be_the_working_directory_or_a_parent(cli, tmp_path: Path, how: list[str]) -> None:
    work = tmp_path / "work"
    work.mkdir()
    clean_error(cli(["train", TOY, *FAST, *how], work), "train", "working directory")
    assert list(work.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_run_folder_may_not_be_inside_the_data_folder(cli, tmp_path: Path) -> None:
    (tmp_path / "media").mkdir()
    path = _media(tmp_path, {"path: ../shared/data/emoji64": "path: media"})
    clean_error(cli(["train", path, "--run-dir", "media/run"], tmp_path), "train", "--run-dir", "media/run",
                "inside data.path")
    assert list((tmp_path / "media").iterdir()) == []
