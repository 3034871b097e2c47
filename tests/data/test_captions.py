"""Captions in the three Hugging Face folder forms, detection order, per-item problems, dropped rows."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import pytest
from media_factory import write_jsonl, write_text_file

from mmflow.data.bad_items import reason_kind
from mmflow.data.captions import MetadataError, find_media, load_captions
from mmflow.errors import UserError

PNG = ("png", "jpg")


def touch(root: Path, *names: str) -> None:
    for n in names:
        write_text_file(root / n, "x")  # captions never decode media, any bytes do


def by_name(index, root: Path) -> dict[str, object]:
    return {e.path.relative_to(root).as_posix(): e for e in index.entries}


def test_find_media_recurses_filters_extensions_and_skips_hidden(tmp_path):
    touch(tmp_path, "b.png", "a/c.JPG", "a/d.wav", ".hidden.png", "._b.png", ".git/x.png", "z.txt")
    found = [p.relative_to(tmp_path).as_posix() for p in find_media(tmp_path, PNG)]
    assert found == ["a/c.JPG", "b.png"]


def test_jsonl_keeps_extra_fields_and_resolves_subfolders(tmp_path):
    touch(tmp_path, "a.png", "sub/b.png", "sub/deeper/c.png", "v.mp4")
    write_jsonl(tmp_path / "metadata.jsonl", [
        {"file_name": "a.png", "text": "a cat", "codepoint": "U+1F431"},
        {"file_name": "sub/b.png", "text": "a dog"},
        {"file_name": "a.png", "text": "a second caption of a"},
        {"file_name": "v.mp4", "text": "a video, not an image: ignored"},
    ])
    write_jsonl(tmp_path / "sub" / "deeper" / "metadata.jsonl", [{"file_name": "c.png", "text": "a bird"}])
    index = load_captions(tmp_path, PNG)
    assert index.source == "jsonl"
    got = [(e.path.relative_to(tmp_path).as_posix(), e.text, e.extra, e.problem) for e in index.entries]
    assert got == [
        ("a.png", "a cat", {"codepoint": "U+1F431"}, None),
        ("sub/b.png", "a dog", {}, None),
        ("a.png", "a second caption of a", {}, None),
        ("sub/deeper/c.png", "a bird", {}, None),
    ]
    assert index.uncaptioned == []
    assert [(n, reason_kind(r)) for n, r in index.dropped] == [("v.mp4", "other extension")]  # not silent


def test_jsonl_non_text_captions_and_missing_files_are_problems(tmp_path, caplog):
    touch(tmp_path, "n.png", "z.png", "l.png", "k.png", "ok.png", "extra.png")
    write_jsonl(tmp_path / "metadata.jsonl", [
        {"file_name": "n.png", "text": 3},
        {"file_name": "z.png", "text": None},
        {"file_name": "l.png", "text": ["a", "b"]},
        {"file_name": "k.png", "caption": "wrong key"},
        {"file_name": "gone.png", "text": "listed but missing"},
        {"file_name": "ok.png", "text": "fine"},
    ])
    with caplog.at_level(logging.WARNING, logger="mmflow.data"):
        index = load_captions(tmp_path, PNG)
    e = by_name(index, tmp_path)
    assert e["n.png"].problem.startswith("non-text caption: int 3")
    assert e["z.png"].problem.startswith("non-text caption: NoneType None")
    assert e["l.png"].problem.startswith("non-text caption: list ['a', 'b']")
    assert e["k.png"].problem.startswith("non-text caption: no 'text' field")
    assert str(tmp_path / "metadata.jsonl") + ":2" in e["z.png"].problem  # names the line
    assert e["gone.png"].problem.startswith("missing file: listed at")
    assert e["ok.png"].problem is None and e["ok.png"].text == "fine"
    # a media file without a row still trains (with empty text), and the user is told
    assert e["extra.png"].text == "" and e["extra.png"].problem is None
    assert index.uncaptioned == [tmp_path / "extra.png"]
    assert "1 media file(s)" in caplog.text and "extra.png" in caplog.text


def test_text_field_option(tmp_path):
    touch(tmp_path, "a.png")
    write_jsonl(tmp_path / "metadata.jsonl", [{"file_name": "a.png", "caption": "from caption", "text": 7}])
    (e,) = load_captions(tmp_path, PNG, text_field="caption").entries
    assert (e.text, e.problem, e.extra) == ("from caption", None, {"text": 7})


def test_malformed_jsonl_fails_with_file_and_line(tmp_path):
    touch(tmp_path, "a.png")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "ok"}\n{"file_name": "a.png", \n')
    with pytest.raises(ValueError, match=r"metadata\.jsonl:2: not valid JSON"):
        load_captions(tmp_path, PNG)
    (tmp_path / "metadata.jsonl").write_text('{"text": "no file name"}\n')
    with pytest.raises(ValueError, match=r"metadata\.jsonl:1: needs a 'file_name'") as err:
        load_captions(tmp_path, PNG)
    assert isinstance(err.value, MetadataError) and isinstance(err.value, UserError)  # the CLI's one-line path


def test_csv(tmp_path):
    touch(tmp_path, "a.png", "b/c.png")
    (tmp_path / "metadata.csv").write_text('file_name,text,style\na.png,"a cat, sleeping",photo\nb/c.png,,drawing\n')
    index = load_captions(tmp_path, PNG, mode="csv")
    assert index.source == "csv"
    e = by_name(index, tmp_path)
    assert (e["a.png"].text, e["a.png"].extra) == ("a cat, sleeping", {"style": "photo"})
    assert (e["b/c.png"].text, e["b/c.png"].problem) == ("", None)  # an empty cell is an empty caption
    (tmp_path / "metadata.csv").write_text("name,text\na.png,x\n")
    with pytest.raises(ValueError, match="needs a 'file_name' column"):
        load_captions(tmp_path, PNG)


def test_txt_sidecars(tmp_path, caplog):
    touch(tmp_path, "a.png", "d/b.jpg", "c.png", "bad.png")
    (tmp_path / "a.txt").write_text("  a red apple \n")
    (tmp_path / "d" / "b.txt").write_text("a green pear")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\xfa not utf-8")
    with caplog.at_level(logging.WARNING, logger="mmflow.data"):
        index = load_captions(tmp_path, PNG)
    assert index.source == "txt"
    e = by_name(index, tmp_path)
    assert e["a.png"].text == "a red apple"
    assert e["d/b.jpg"].text == "a green pear"
    assert e["c.png"].text == "" and index.uncaptioned == [tmp_path / "c.png"]
    assert e["bad.png"].problem.startswith("non-text caption:") and "not UTF-8" in e["bad.png"].problem
    assert "c.png" in caplog.text


def test_detection_order_jsonl_then_csv_then_txt(tmp_path):
    touch(tmp_path, "a.png")
    (tmp_path / "a.txt").write_text("from txt")
    assert load_captions(tmp_path, PNG).entries[0].text == "from txt"
    (tmp_path / "metadata.csv").write_text("file_name,text\na.png,from csv\n")
    assert load_captions(tmp_path, PNG).entries[0].text == "from csv"
    write_jsonl(tmp_path / "metadata.jsonl", [{"file_name": "a.png", "text": "from jsonl"}])
    assert load_captions(tmp_path, PNG).entries[0].text == "from jsonl"
    # an explicit choice wins over detection
    assert load_captions(tmp_path, PNG, mode="txt").entries[0].text == "from txt"
    assert load_captions(tmp_path, PNG, mode="none").entries[0].text == ""


def test_no_captions_warns_and_trains_unconditionally(tmp_path, caplog):
    touch(tmp_path, "a.png", "b.png")
    with caplog.at_level(logging.WARNING, logger="mmflow.data"):
        index = load_captions(tmp_path, PNG)
    assert index.source == "none"
    assert [e.text for e in index.entries] == ["", ""]
    assert "no captions" in caplog.text and "unconditionally" in caplog.text


def test_explicit_mode_without_its_file_fails(tmp_path):
    touch(tmp_path, "a.png")
    with pytest.raises(FileNotFoundError, match="no metadata.jsonl"):
        load_captions(tmp_path, PNG, mode="jsonl")


# ------------------------------------------------------------------ rows that are not items
def write_rows(meta: Path, rows: list[dict[str, str]]) -> None:
    """rows as metadata.jsonl or metadata.csv, by `meta`'s name."""
    if meta.suffix == ".jsonl":
        write_jsonl(meta, rows)
        return
    with meta.open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["file_name", "text"])
        w.writeheader()
        w.writerows(rows)


@pytest.mark.parametrize("meta_name", ["metadata.jsonl", "metadata.csv"])
def test_rows_outside_the_folder_absolute_or_of_another_extension_are_dropped_and_named(tmp_path, meta_name):
    root = tmp_path / "data"
    touch(tmp_path, "outside/x.png", "x.png")  # real files beside the folder: a row must not reach them
    touch(root, "good.png", "sub/b.png", "notes.txt")
    (root / "link.png").symlink_to(tmp_path / "outside" / "x.png")  # the user's own symlinks are theirs
    (root / "linkdir").symlink_to(tmp_path / "outside", target_is_directory=True)
    absolute = str(tmp_path / "outside" / "x.png")
    write_rows(root / meta_name, [
        {"file_name": "good.png", "text": "good"},
        {"file_name": "../outside/x.png", "text": "climbs out"},
        {"file_name": absolute, "text": "absolute"},
        {"file_name": "sub/../../x.png", "text": "climbs out after normalising"},
        {"file_name": "notes.txt", "text": "not an image"},
        {"file_name": "sub/../sub/b.png", "text": "b, normalised inside"},
        {"file_name": "link.png", "text": "symlink"},
        {"file_name": "linkdir/x.png", "text": "through a symlinked folder"},
    ])
    write_rows(root / "sub" / meta_name, [{"file_name": "../good.png", "text": "good from sub"},  # still inside
                                          {"file_name": "../../outside/x.png", "text": "out from sub"}])
    index = load_captions(root, PNG)
    got = [(e.path.relative_to(root).as_posix(), e.text, e.problem) for e in index.entries]
    assert got == [("good.png", "good", None), ("sub/b.png", "b, normalised inside", None),
                   ("link.png", "symlink", None), ("linkdir/x.png", "through a symlinked folder", None),
                   ("good.png", "good from sub", None)]
    assert all(not os.path.relpath(e.path, root).startswith("..") for e in index.entries)
    dropped = [(n, reason_kind(r)) for n, r in index.dropped]
    assert dropped == [("../outside/x.png", "outside folder"), (absolute, "absolute path"),
                       ("sub/../../x.png", "outside folder"), ("notes.txt", "other extension"),
                       ("../../outside/x.png", "outside folder")]
    first, *_ = index.dropped
    assert f"{root / meta_name}:" in first[1] and str(root) in first[1]  # names the metadata line and the folder


def test_a_nul_byte_in_a_file_name_is_dropped_not_raised(tmp_path):
    touch(tmp_path, "a.png")
    write_jsonl(tmp_path / "metadata.jsonl", [{"file_name": "a\u0000.png", "text": "x"}, {"file_name": "a.png"}])
    index = load_captions(tmp_path, PNG)
    assert [reason_kind(r) for _, r in index.dropped] == ["bad file name"]
    assert [e.path.name for e in index.entries] == ["a.png"]
