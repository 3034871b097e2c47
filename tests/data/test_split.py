"""mmflow/data/split.py: a media folder into train/ and test/, stratified, deterministic, never overwriting."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from mmflow.data.split import SplitError, main, split_folder, split_rows


def _folder(root: Path, groups: dict[str, int]) -> Path:
    """A media folder whose files are small text stand-ins (a split never decodes them)."""
    (root / "media").mkdir(parents=True)
    lines = []
    for g, n in groups.items():
        for i in range(n):
            name = f"media/{g}_{i:03d}.png"
            (root / name).write_text(f"{g} {i}")
            lines.append(json.dumps({"file_name": name, "text": f"a {g} thing number {i}", "kind": g}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


def test_a_stratified_split_keeps_every_groups_share_and_loses_no_row(tmp_path):
    src = _folder(tmp_path / "src", {"a": 10, "b": 20, "c": 30})
    r = split_folder(src, tmp_path / "out", 0.2, by="kind")
    assert (r.num_train, r.num_test) == (48, 12)
    assert r.test_by_group == {"a": 2, "b": 4, "c": 6}
    train, test = _rows(r.train), _rows(r.test)
    assert Counter(row["kind"] for row in test) == {"a": 2, "b": 4, "c": 6}
    names = [row["file_name"] for row in train + test]
    assert sorted(names) == sorted(row["file_name"] for row in _rows(src)) and len(set(names)) == 60
    # each half keeps the source's lines verbatim and in the source's order
    source_lines = (src / "metadata.jsonl").read_text().splitlines()
    for half in (r.train, r.test):
        lines = (half / "metadata.jsonl").read_text().splitlines()
        assert lines == [line for line in source_lines if line in set(lines)]
    # the media are symlinks to the source files
    f = r.test / test[0]["file_name"]
    assert f.is_symlink() and f.resolve() == (src / test[0]["file_name"]).resolve()


def test_largest_remainders_fill_the_count_exactly():
    rows = [{"file_name": f"{i}", "k": k} for i, k in enumerate("a" * 5 + "b" * 5 + "c" * 5)]
    held = split_rows(rows, 4, seed=0, by="k")
    assert sum(held) == 4
    per = Counter(r["k"] for r, h in zip(rows, held) if h)
    assert sorted(per.values()) == [1, 1, 2]  # 4/3 each: one group takes the remaining item


def test_the_split_depends_on_the_seed_only(tmp_path):
    rows = [{"file_name": f"{i}"} for i in range(50)]
    assert split_rows(rows, 10, seed=3) == split_rows(rows, 10, seed=3)
    assert split_rows(rows, 10, seed=3) != split_rows(rows, 10, seed=4)
    assert sum(split_rows(rows, 0.1)) == 5


def test_copy_copies_the_media(tmp_path):
    src = _folder(tmp_path / "src", {"a": 4})
    r = split_folder(src, tmp_path / "out", 1, copy=True)
    f = next((r.test / "media").iterdir())
    assert not f.is_symlink() and f.read_text().startswith("a ")


def test_bad_input_is_refused_with_what_is_at_fault(tmp_path):
    src = _folder(tmp_path / "src", {"a": 6})
    with pytest.raises(SplitError, match="no 'motion' field"):
        split_folder(src, tmp_path / "o1", 2, by="motion")
    with pytest.raises(SplitError, match="at least one on each side"):
        split_folder(src, tmp_path / "o2", 6)
    (tmp_path / "o3" / "test").mkdir(parents=True)
    (tmp_path / "o3" / "test" / "mine.txt").write_text("keep me")
    with pytest.raises(SplitError, match="is not empty"):
        split_folder(src, tmp_path / "o3", 2)
    assert (tmp_path / "o3" / "test" / "mine.txt").read_text() == "keep me"
    assert not (tmp_path / "o3" / "train").exists()
    (src / "media" / "a_000.png").unlink()
    with pytest.raises(SplitError, match=r"metadata.jsonl:1: .*a_000.png does not exist"):
        split_folder(src, tmp_path / "o4", 2)
    (src / "metadata.jsonl").write_text('{"file_name": "../x.png"}\n{"file_name": "y.png"}\n')
    with pytest.raises(SplitError, match="outside the folder"):
        split_folder(src, tmp_path / "o5", 1)
    (src / "metadata.jsonl").write_text("not json\n")
    with pytest.raises(SplitError, match="metadata.jsonl:1: not a JSON object"):
        split_folder(src, tmp_path / "o6", 1)


def test_the_command_line(tmp_path, capsys):
    src = _folder(tmp_path / "src", {"a": 3, "b": 6})
    assert main([str(src), "--out", str(tmp_path / "out"), "--test", "3", "--by", "kind"]) == 0
    out = capsys.readouterr().out
    assert "6 items" in out and "3 items (a 1, b 2)" in out
    with pytest.raises(SystemExit) as e:
        main([str(src), "--out", str(tmp_path / "out"), "--test", "3"])
    assert e.value.code == 2 and "is not empty" in capsys.readouterr().err
