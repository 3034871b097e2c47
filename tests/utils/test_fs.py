"""Tests for mmflow/utils/fs.py: atomic file writes and atomic folder replacement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmflow.utils.fs import (
    KILL_AT_ENV,
    atomic_folder,
    crash_point,
    recover_leftovers,
    write_json_atomic,
    write_text_atomic,
)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_text_atomic_creates_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.txt"  # parent is created
    write_text_atomic(target, "first")
    assert target.read_text() == "first"
    write_text_atomic(target, "second, longer content\n")
    assert target.read_text() == "second, longer content\n"
    write_text_atomic(target, "x")  # shorter: no leftover bytes of the old content
    assert target.read_text() == "x"
    assert _names(target.parent) == ["a.txt"]  # no temp files left


def test_write_text_atomic_keeps_old_content_and_no_temp_file_when_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mmflow.utils.fs as fs

    target = tmp_path / "a.txt"
    write_text_atomic(target, "old")

    def boom(src, dst):
        raise OSError("replace failed (simulated)")

    monkeypatch.setattr(fs.os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        write_text_atomic(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert _names(tmp_path) == ["a.txt"]


def test_write_json_atomic_round_trip(tmp_path: Path) -> None:
    target = tmp_path / "d.json"
    write_json_atomic(target, {"b": [1, 2.5], "a": {"c": None}})
    assert json.loads(target.read_text()) == {"b": [1, 2.5], "a": {"c": None}}
    write_json_atomic(target, {"z": 1})
    assert json.loads(target.read_text()) == {"z": 1}
    assert target.read_text().endswith("\n")
    assert _names(tmp_path) == ["d.json"]


def test_atomic_folder_creates_new(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    with atomic_folder(dest) as tmp:
        assert tmp != dest and tmp.parent == dest.parent and tmp.is_dir()
        (tmp / "f.txt").write_text("hello")
        (tmp / "nested").mkdir()
        (tmp / "nested" / "g.txt").write_text("deep")
        assert not dest.exists()  # nothing visible before success
    assert (dest / "f.txt").read_text() == "hello"
    assert (dest / "nested" / "g.txt").read_text() == "deep"
    assert _names(tmp_path) == ["out"]


def test_atomic_folder_replaces_existing_only_on_success(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with atomic_folder(dest) as tmp:
        (tmp / "new.txt").write_text("new")
        assert (dest / "old.txt").read_text() == "old"  # still the old folder inside the block
    assert _names(dest) == ["new.txt"]  # replaced, not merged
    assert (dest / "new.txt").read_text() == "new"
    assert _names(tmp_path) == ["out"]  # the renamed-aside old folder is gone too


def test_atomic_folder_keeps_old_on_exception(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_folder(dest) as tmp:
            (tmp / "half.txt").write_text("partial")
            raise RuntimeError("midway")
    assert _names(dest) == ["old.txt"]
    assert (dest / "old.txt").read_text() == "old"
    assert _names(tmp_path) == ["out"]  # temp folder removed


def test_atomic_folder_exception_without_existing_dest(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(tmp_path / "out") as tmp:
            (tmp / "x").write_text("x")
            raise KeyboardInterrupt  # BaseException is cleaned up as well
    assert _names(tmp_path) == []


def test_atomic_folder_no_overwrite(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(FileExistsError):
        with atomic_folder(dest, overwrite=False) as tmp:
            (tmp / "new.txt").write_text("new")
    assert _names(dest) == ["old.txt"]
    assert _names(tmp_path) == ["out"]


def test_write_json_atomic_refuses_nan_and_infinity_naming_the_key(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    write_json_atomic(target, {"ok": 1.0})
    for bad, key in (({"a": {"b": [1.0, float("nan")]}}, "a.b.1"), ({"loss": float("inf")}, "loss")):
        with pytest.raises(ValueError, match=rf"m.json: refusing to write the non-finite number at {key}"):
            write_json_atomic(target, bad)
    assert json.loads(target.read_text()) == {"ok": 1.0}  # the old content stays
    assert _names(tmp_path) == ["m.json"]


def _killed_between_renames(parent: Path) -> None:
    """What atomic_folder leaves when a kill falls between renaming `model` aside and the new one in."""
    (parent / ".old-model-0123abcd").mkdir()
    (parent / ".old-model-0123abcd" / "w.txt").write_text("last good")
    (parent / ".tmp-model-89abcdef").mkdir()
    (parent / ".tmp-model-89abcdef" / "w.txt").write_text("newer")


def test_recover_leftovers_restores_the_old_folder_when_the_destination_is_missing(tmp_path: Path) -> None:
    _killed_between_renames(tmp_path)
    actions = recover_leftovers(tmp_path)
    assert (tmp_path / "model" / "w.txt").read_text() == "last good"
    assert _names(tmp_path) == ["model"]
    assert any(a.startswith(f"restored {tmp_path / 'model'} from .old-model-0123abcd") for a in actions), actions
    assert any(str(tmp_path / ".tmp-model-89abcdef") in a for a in actions), actions
    assert recover_leftovers(tmp_path) == []  # nothing left to do


def test_recover_leftovers_removes_temporaries_beside_a_complete_destination(tmp_path: Path) -> None:
    _killed_between_renames(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.txt").write_text("current")
    (tmp_path / ".metrics.json.deadbeef.tmp").write_text("{")  # write_text_atomic cut short
    (tmp_path / ".recipe.yaml.k3j_9zqa.tmp").write_text("na")  # a mkstemp name (config.dump_yaml)
    (tmp_path / ".tmp-step_00000002").mkdir()  # not atomic_folder's: left to its owner
    (tmp_path / ".tmp-notes").write_text("a user's file")
    actions = recover_leftovers(tmp_path)
    assert len(actions) == 4 and all(a.startswith("removed ") for a in actions), actions
    assert (tmp_path / "model" / "w.txt").read_text() == "current"
    assert _names(tmp_path) == [".tmp-notes", ".tmp-step_00000002", "model"]


def test_recover_leftovers_of_a_missing_folder_is_nothing(tmp_path: Path) -> None:
    assert recover_leftovers(tmp_path / "absent") == []


def test_crash_point_is_a_no_op_unless_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KILL_AT_ENV, raising=False)
    crash_point("step")
    monkeypatch.setenv(KILL_AT_ENV, "export:1")
    crash_point("step")  # another phase: still alive
