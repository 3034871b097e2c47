"""Bad-item records, their aggregation over batches, the max-fraction check and abandonable calls."""

from __future__ import annotations

import logging
import pickle
import threading
import time

import pytest
import torch

from mmflow.data.bad_items import BadDataError, BadItemLog, BadMedia, call_with_timeout, check_file, reason_kind


def batch(n: int, bad: list[tuple[str, str]]) -> dict:
    return {"index": torch.arange(n), "bad": bad}


def test_bad_media_reason_and_pickling():
    e = BadMedia("too few frames", "5 < 8", permanent=False)
    assert str(e) == e.reason == "too few frames: 5 < 8"
    assert reason_kind(e.reason) == "too few frames"
    assert reason_kind("decode error: pyav: [Errno 1] x: y") == "decode error"
    back = pickle.loads(pickle.dumps(e))  # raised in a DataLoader worker, read in the main process
    assert (back.kind, back.detail, back.permanent) == ("too few frames", "5 < 8", False)
    assert BadMedia("missing file").reason == "missing file"


def test_log_counts_distinct_paths_and_logs_each_once(caplog):
    log = BadItemLog()
    with caplog.at_level(logging.WARNING, logger="mmflow.data"):
        new = log.update(batch(4, [("/d/a.mp4", "too few frames: 3 < 8"), ("/d/b.png", "decode error: truncated")]))
        log.update(batch(4, [("/d/a.mp4", "too few frames: 3 < 8")]))
        log.update(batch(4, []))
    assert new == [("/d/a.mp4", "too few frames: 3 < 8"), ("/d/b.png", "decode error: truncated")]
    assert log.counts == {"too few frames": 1, "decode error": 1}
    assert (log.seen, log.bad) == (12, 3)
    assert log.fraction == pytest.approx(3 / 12)
    records = [r for r in caplog.records if r.name == "mmflow.data"]
    assert [r.getMessage() for r in records] == [
        "skipped bad media /d/a.mp4 (too few frames: 3 < 8)", "skipped bad media /d/b.png (decode error: truncated)"]
    text = log.summary()
    assert "2 distinct files skipped" in text and "/d/a.mp4: too few frames: 3 < 8" in text and "25.00%" in text
    assert BadItemLog().summary() == "bad media: none (0 items loaded)"


def test_check_raises_with_fraction_limit_key_and_paths():
    log = BadItemLog(log=False)
    for k in range(10):
        log.update(batch(8, [(f"/data/bad{k}.wav", "silent audio: peak 0 <= 0.0001")]))
    assert log.fraction == pytest.approx(10 / 80)
    log.check(0.2)  # below the limit
    log.check(0.05, min_seen=1000)  # too early to judge
    with pytest.raises(BadDataError) as info:
        log.check(0.05, min_seen=80)
    msg = str(info.value)
    assert "12.5% of media items were bad (10 of 80)" in msg and "data.max_bad_fraction = 0.05" in msg
    assert "/data/bad0.wav (silent audio: peak 0 <= 0.0001)" in msg and "/data/bad4.wav" in msg
    assert "/data/bad5.wav" not in msg  # only the first few
    assert "silent audio 10" in msg


def test_merge_and_state_dict_round_trip():
    a, b = BadItemLog(log=False), BadItemLog(log=False)
    a.update(batch(3, [("/x", "missing file")]))
    b.update(batch(5, [("/x", "missing file"), ("/y", "empty file: 0 bytes")]))
    a.merge(b)
    assert (a.seen, a.bad, a.counts) == (8, 3, {"missing file": 1, "empty file": 1})
    c = BadItemLog()
    c.load_state_dict(pickle.loads(pickle.dumps(a.state_dict())))
    assert c.state_dict() == a.state_dict()


def test_call_with_timeout():
    assert call_with_timeout(lambda: 41 + 1, 5.0, "p") == 42
    with pytest.raises(BadMedia, match="^decode error: inner"):
        call_with_timeout(lambda: (_ for _ in ()).throw(BadMedia("decode error", "inner")), 5.0, "p")
    with pytest.raises(ZeroDivisionError):
        call_with_timeout(lambda: 1 / 0, 5.0, "p")
    release = threading.Event()
    t0 = time.perf_counter()
    with pytest.raises(BadMedia, match=r"^decode timeout: > 0.2 s$"):
        call_with_timeout(lambda: release.wait(30), 0.2, "/slow.mp4")
    assert time.perf_counter() - t0 < 2.0  # abandoned, not waited for
    assert call_with_timeout(lambda: "next", 1.0, "p") == "next"  # a fresh helper thread, not the stuck one
    release.set()
    assert call_with_timeout(threading.get_ident, None) == threading.get_ident()  # no timeout: inline


def test_check_file(tmp_path):
    (tmp_path / "z").write_bytes(b"")
    (tmp_path / "f").write_bytes(b"abc")
    assert check_file(tmp_path / "f") == 3
    with pytest.raises(BadMedia, match="^empty file: 0 bytes$"):
        check_file(tmp_path / "z")
    with pytest.raises(BadMedia, match="^missing file$"):
        check_file(tmp_path / "nothing")


def test_update_counts_replaced_items_not_failed_candidates():
    # item 0 was bad and so was the first candidate tried in its place: one bad item, two bad files
    log = BadItemLog(log=False)
    log.update({"index": torch.tensor([2, 1, 2]), "requested": torch.tensor([0, 1, 2]),
                "bad": [("/a", "empty file: 0 bytes"), ("/b", "decode error: x")]})
    assert (log.seen, log.bad, len(log.paths)) == (3, 1, 2)
