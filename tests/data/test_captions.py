"""Captions in the three Hugging Face folder forms, detection order, and per-item problems."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from media_factory import write_jsonl, write_text_file

from mmflow.data.captions import find_media, load_captions

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
    with pytest.raises(ValueError, match=r"metadata\.jsonl:1: needs a 'file_name'"):
        load_captions(tmp_path, PNG)


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
