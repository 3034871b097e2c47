"""MediaFolderDataset end to end: config checks, items, bad media accounting, workers, buckets, timeouts."""

from __future__ import annotations

import logging
import pickle
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from media_factory import (level_frames, noisy_frames, pattern_rgb, sine, truncate, write_audio, write_image,
                           write_jsonl, write_mp4, write_text_file, write_zero_byte)
from torch.utils.data import DataLoader

from mmflow.config import ConfigError, from_dict
from mmflow.data.bad_items import BadDataError, BadItemLog
from mmflow.data.media_folder import MediaFolderConfig, MediaFolderDataset, collate, scan
from mmflow.data.video_reader import PyAVBackend, VideoBackendUnavailable
from mmflow.errors import UserError


def cfg(path: Path, **kw) -> MediaFolderConfig:
    return from_dict(MediaFolderConfig, {"path": str(path), **kw})


def iterate(ds, batch_size=4, **loader_kw) -> list[dict]:
    return list(DataLoader(ds, batch_size=batch_size, collate_fn=collate, **loader_kw))


# ------------------------------------------------------------------ config
def test_config_validation_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^crop: 'center' is not a audio crop"):
        cfg(tmp_path, modality="audio", crop="center")
    with pytest.raises(ConfigError, match=r"^fps: set either fps or stride"):
        cfg(tmp_path, modality="video", fps=4.0, stride=2)
    with pytest.raises(ConfigError, match=r"^bucketing: aspect-ratio buckets are for image and video"):
        cfg(tmp_path, modality="audio", bucketing=True)
    with pytest.raises(ConfigError, match=r"^size: 4 is out of bounds"):
        cfg(tmp_path, size=4)
    with pytest.raises(ConfigError, match=r"^short_clips: 'pad' is not one of 'skip', 'loop'"):
        cfg(tmp_path, short_clips="pad")
    with pytest.raises(ConfigError, match=r"^channels: 3 is not one of 1, 2"):
        cfg(tmp_path, channels=3)
    with pytest.raises(ConfigError, match=r"^pth: unknown key.*did you mean 'path'"):
        from_dict(MediaFolderConfig, {"path": "x", "pth": "y"})
    c = cfg(tmp_path, modality="audio")
    assert (c.crop_mode, c.media_extensions[:2]) == ("random", ("wav", "flac"))
    assert cfg(tmp_path, extensions=[".PNG"]).media_extensions == ("png",)


def test_missing_and_empty_folders_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"data.path: media folder {tmp_path / 'nope'} does not exist"):
        MediaFolderDataset(cfg(tmp_path / "nope"))
    write_text_file(tmp_path / "readme.txt")
    with pytest.raises(ValueError, match=rf"no image files \(png, jpg.*\) found under {tmp_path}"):
        MediaFolderDataset(cfg(tmp_path))
    write_image(tmp_path / "a.png", pattern_rgb(8, 8))
    with pytest.raises(VideoBackendUnavailable, match="torchcodec"):
        MediaFolderDataset(cfg(tmp_path, modality="video", video_backend="torchcodec", extensions=["png"]))


# ------------------------------------------------------------------ items
def test_image_items_and_collate(tmp_path, caplog):
    for k in range(3):
        write_image(tmp_path / "img" / f"{k}.png", pattern_rgb(16, 24, seed=k))
    write_jsonl(tmp_path / "metadata.jsonl", [
        {"file_name": f"img/{k}.png", "text": f"picture {k}", "k": k} for k in range(3)])
    ds = MediaFolderDataset(cfg(tmp_path, size=16), seed=0)
    assert len(ds) == 3 and ds.caption_source == "jsonl"
    item = ds[1]
    assert set(item) == {"media", "text", "index", "requested", "path", "bad", "meta"}
    assert item["requested"] == item["index"] == 1
    assert item["media"].shape == (3, 16, 16) and item["text"] == "picture 1" and item["index"] == 1
    assert item["path"] == str(tmp_path / "img" / "1.png") and item["bad"] == [] and item["meta"] == {"k": 1}
    expected = torch.from_numpy(pattern_rgb(16, 24, seed=1)[:, 4:20].copy()).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.equal(item["media"], expected)  # centre crop, no resize needed
    b = collate([ds[0], ds[2]])
    assert b["media"].shape == (2, 3, 16, 16) and b["index"].tolist() == b["requested"].tolist() == [0, 2]
    assert b["text"] == ["picture 0", "picture 2"] and b["bad"] == [] and "mask" not in b
    assert pickle.loads(pickle.dumps(ds)).entries == ds.entries


def test_no_captions_gives_empty_text(tmp_path, caplog):
    write_image(tmp_path / "a.png", pattern_rgb(8, 8))
    with caplog.at_level(logging.WARNING, logger="mmflow.data"):
        ds = MediaFolderDataset(cfg(tmp_path, size=8))
    assert ds[0]["text"] == "" and "unconditionally" in caplog.text


def test_audio_and_video_items(tmp_path):
    write_audio(tmp_path / "a" / "long.wav", sine(2.0, 8000), 8000)
    write_audio(tmp_path / "a" / "short.flac", sine(0.25, 16000, channels=2), 16000)
    ds = MediaFolderDataset(cfg(tmp_path / "a", modality="audio", sample_rate=8000, seconds=1.0, channels=2))
    b = collate([ds[0], ds[1]])
    assert b["media"].shape == (2, 2, 8000) and b["mask"].shape == (2, 8000) and b["mask"].dtype == torch.bool
    assert b["mask"].sum(1).tolist() == [8000, 2000]
    write_mp4(tmp_path / "v" / "c.mp4", level_frames(12, 32, 64))
    vs = MediaFolderDataset(cfg(tmp_path / "v", modality="video", size=32, frames=4, stride=2))
    x = vs[0]["media"]
    assert x.shape == (3, 4, 32, 32)
    means = ((x + 1) * 127.5).mean(dim=(0, 2, 3))
    first = round((float(means[0]) - 16) / 12)
    assert [round((float(m) - 16) / 12) for m in means] == [first, first + 2, first + 4, first + 6]


# ------------------------------------------------------------------ bad media
@pytest.fixture
def broken_folders(tmp_path):
    """Three folders, each with good files and every kind of bad file of its modality."""
    img = tmp_path / "img"
    for k in range(4):
        write_image(img / f"good{k}.png", pattern_rgb(16, 16, seed=k))
    write_zero_byte(img / "zero.png")
    truncate(write_image(img / "trunc.png", pattern_rgb(64, 64)), 0.4)
    write_text_file(img / "text.png")
    write_image(img / "numcap.png", pattern_rgb(16, 16))
    rows = [{"file_name": p.name, "text": f"a {p.stem}"} for p in sorted(img.glob("*.png")) if p.name != "numcap.png"]
    rows += [{"file_name": "numcap.png", "text": 12}, {"file_name": "gone.png", "text": "never written"}]
    write_jsonl(img / "metadata.jsonl", rows)

    vid = tmp_path / "vid"
    for k in range(3):
        write_mp4(vid / f"good{k}.mp4", level_frames(10, 32, 64))
    write_zero_byte(vid / "zero.mp4")
    truncate(write_mp4(vid / "trunc.mp4", noisy_frames(10)), 0.5)
    write_text_file(vid / "text.mp4")
    write_mp4(vid / "short.mp4", level_frames(3, 32, 64))

    aud = tmp_path / "aud"
    for k in range(3):
        write_audio(aud / f"good{k}.wav", sine(1.0, 8000, freq=200 + 100 * k), 8000)
    write_audio(aud / "silent.wav", np.zeros((8000, 1), np.float32), 8000)
    nan = sine(1.0, 8000)
    nan[3999:4001] = np.nan  # inside every 0.5 s window of this 1 s file
    write_audio(aud / "nan.wav", nan, 8000, "FLOAT")
    write_zero_byte(aud / "zero.flac")
    return img, vid, aud


EXPECTED = {
    "img": {"zero.png": "empty file", "trunc.png": "decode error", "text.png": "decode error",
            "numcap.png": "non-text caption", "gone.png": "missing file"},
    "vid": {"zero.mp4": "empty file", "trunc.mp4": "decode error", "text.mp4": "decode error",
            "short.mp4": "too few frames"},
    "aud": {"silent.wav": "silent audio", "nan.wav": "non-finite audio", "zero.flac": "empty file"},
}


def make(folder: Path, **kw) -> MediaFolderDataset:
    kind = folder.name
    base = {"img": {"size": 16}, "vid": {"modality": "video", "size": 32, "frames": 4},
            "aud": {"modality": "audio", "sample_rate": 8000, "seconds": 0.5}}[kind]
    return MediaFolderDataset(cfg(folder, **base, **kw), seed=0)


@pytest.mark.parametrize("kind", ["img", "vid", "aud"])
def test_every_bad_file_is_skipped_counted_and_logged(broken_folders, kind, caplog):
    folder = dict(zip(["img", "vid", "aud"], broken_folders))[kind]
    ds = make(folder)
    log = BadItemLog()
    with caplog.at_level(logging.WARNING, logger="mmflow.data"):
        batches = iterate(ds, batch_size=3)
        for b in batches:
            log.update(b)
    expected = {str(folder / name): why for name, why in EXPECTED[kind].items()}
    assert {p: r.split(":")[0] for p, r in log.paths.items()} == expected
    assert log.bad == len(expected) and log.seen == len(ds)
    assert all(len(b["index"]) == min(3, len(ds) - 3 * k) for k, b in enumerate(batches))  # sizes kept
    delivered = [p for b in batches for p in b["path"]]
    assert not set(delivered) & set(expected)  # no bad file ever reaches a batch
    for path in expected:  # each logged once, with its path
        assert sum(path in r.getMessage() for r in caplog.records) == 1
    if kind == "vid":
        assert log.paths[str(folder / "short.mp4")] == "too few frames: 3 < 4"
    # the replacement is the next item that loads, deterministically
    for i, e in enumerate(ds.entries):
        item = ds[i]
        assert item["requested"] == i
        if str(e.path) in expected:
            assert item["bad"][0][0] == str(e.path) and item["index"] != i
            assert str(ds.entries[item["index"]].path) not in expected
            assert torch.equal(item["media"], ds[item["index"]]["media"])
        else:
            assert item["bad"] == [] and item["index"] == i


def test_scan_checks_every_item_once(broken_folders):
    img, vid, aud = broken_folders
    for folder in (img, vid, aud):
        ds = make(folder)
        log = ds.scan()
        assert log.seen == len(ds) and log.bad == len(EXPECTED[folder.name])
        want = {}
        for why in EXPECTED[folder.name].values():
            want[why] = want.get(why, 0) + 1
        assert log.counts == want
    log = scan(make(img), num_workers=2, batch_size=2)  # workers send records back in batches
    assert log.seen == len(make(img)) and log.counts["decode error"] == 2


def test_too_many_bad_items_stop_the_run(broken_folders):
    img, _, _ = broken_folders
    ds = make(img, max_bad_fraction=0.2)
    log = BadItemLog(log=False)
    for b in iterate(ds):
        log.update(b)
    with pytest.raises(BadDataError, match=r"data\.max_bad_fraction = 0\.2.*first bad files: .*(zero|trunc|text)\.png"):
        log.check(ds.config.max_bad_fraction, min_seen=len(ds))
    for p in img.glob("good*.png"):
        p.write_bytes(b"")
    everything_bad = make(img)
    with pytest.raises(BadDataError, match="are all bad"):
        everything_bad[0]


def test_dropped_rows_are_never_items_and_are_warned_and_summarised(tmp_path, caplog):
    root = tmp_path / "data"
    outside = write_image(tmp_path / "outside" / "x.png", pattern_rgb(8, 8, seed=9))
    write_image(tmp_path / "x.png", pattern_rgb(8, 8, seed=8))
    for k in range(3):
        write_image(root / f"{k}.png", pattern_rgb(8, 8, seed=k))
    (root / "link.png").symlink_to(outside)  # a symlink the user made inside the folder: still an item
    write_text_file(root / "notes.txt")
    rows = [("../outside/x.png", "outside folder"), (str(outside), "absolute path"),
            ("sub/../../x.png", "outside folder"), ("notes.txt", "other extension")]
    write_jsonl(root / "metadata.jsonl", [{"file_name": n, "text": "dropped"} for n, _ in rows] +
                [{"file_name": f"{k}.png", "text": f"good {k}"} for k in range(3)] +
                [{"file_name": "link.png", "text": "linked"}])
    with caplog.at_level(logging.WARNING, logger="mmflow.data"):
        ds = MediaFolderDataset(cfg(root, size=8))
    assert [e.path for e in ds.entries] == [root / "0.png", root / "1.png", root / "2.png", root / "link.png"]
    assert [it["text"] for it in (ds[i] for i in range(len(ds)))] == ["good 0", "good 1", "good 2", "linked"]
    assert [(n, r.split(":")[0]) for n, r in ds.dropped] == rows
    warning = [r.getMessage() for r in caplog.records if "dropped rows" in r.getMessage()]
    assert len(warning) == 1 and "4 metadata row(s) not used as items (outside folder 2, absolute path 1, " \
                                  "other extension 1)" in warning[0]
    for name, why in rows:  # each dropped row named with its reason, in the one warning
        assert f"  {name}: {why}:" in warning[0]
    # the run's accounting carries them next to the bad media, outside the bad fraction
    log = BadItemLog(log=False)
    log.add_dropped(ds.dropped)
    for b in iterate(ds):
        log.update(b)
    assert log.bad == 0 and log.fraction == 0 and log.seen == 4 and len(log.dropped) == 4
    summary = log.summary()
    assert summary.startswith("bad media: none (4 items loaded)\ndropped rows: 4 metadata row(s)")
    assert "../outside/x.png: outside folder" in summary
    state = log.state_dict()
    log.load_state_dict(state)  # a resume indexes the folder again: dropped rows are not checkpointed
    assert "dropped" not in state and len(log.dropped) == 4


def test_a_folder_whose_rows_are_all_dropped_fails_with_a_user_error(tmp_path):
    write_image(tmp_path / "outside" / "x.png", pattern_rgb(8, 8))
    write_jsonl(tmp_path / "data" / "metadata.jsonl", [{"file_name": "../outside/x.png", "text": "out"}])
    with pytest.raises(UserError, match=r"no image files .* found under .*data \(1 metadata row\(s\) dropped"):
        MediaFolderDataset(cfg(tmp_path / "data"))


# ------------------------------------------------------------------ determinism, workers
def test_random_crops_are_deterministic_across_worker_counts(tmp_path):
    for k in range(10):
        write_image(tmp_path / f"{k}.png", pattern_rgb(24, 40, seed=k))
    write_zero_byte(tmp_path / "9_broken.png")
    ds = MediaFolderDataset(cfg(tmp_path, size=16, crop="random"), seed=3)

    def run(workers: int) -> list[dict]:
        sampler = ds.batch_sampler(local_batch=4)
        loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=workers)
        out = []
        for b in loader:
            out.append(b)
            if len(out) == 6:  # two epochs of 3 batches
                return out
        raise AssertionError("unreachable: the sampler is endless")

    a, b = run(0), run(2)
    for x, y in zip(a, b):
        assert torch.equal(x["media"], y["media"]) and torch.equal(x["index"], y["index"])
        assert x["bad"] == y["bad"]
    # the broken file, once per epoch, reported from a worker process
    assert [r for x in b for r in x["bad"]] == [(str(tmp_path / "9_broken.png"), "empty file: 0 bytes")] * 2
    # the same item at another epoch gets another crop; at the same epoch the same one
    assert torch.equal(ds[(0, 0)]["media"], ds[(0, 0)]["media"])
    assert not torch.equal(ds[(0, 0)]["media"], ds[(0, 1)]["media"])
    ds.set_epoch(1)
    assert torch.equal(ds[0]["media"], ds[(0, 1)]["media"])


def test_video_clips_are_deterministic_across_worker_counts(tmp_path):
    for k in range(4):
        write_mp4(tmp_path / f"{k}.mp4", level_frames(12, 32, 64))
    ds = MediaFolderDataset(cfg(tmp_path, modality="video", size=32, frames=3, crop="random"), seed=1)
    keys = [(i, e) for e in range(2) for i in range(4)]
    serial = [ds[k]["media"] for k in keys]
    loader = DataLoader(ds, batch_sampler=[keys[:4], keys[4:]], collate_fn=collate, num_workers=2)
    parallel = torch.cat([b["media"] for b in loader])
    assert torch.equal(torch.stack(serial), parallel)
    starts = {round((float(((x[:, 0] + 1) * 127.5).mean()) - 16) / 12) for x in serial}
    assert len(starts) > 1  # random clip starts really differ between items / epochs


def test_bucketing_gives_one_shape_per_batch(tmp_path):
    shapes = {"wide": (32, 64), "tall": (64, 32), "square": (48, 48)}
    for name, hw in shapes.items():
        for k in range(3):
            write_image(tmp_path / f"{name}{k}.png", pattern_rgb(*hw, seed=k))
    ds = MediaFolderDataset(cfg(tmp_path, size=32, bucketing=True, bucket_multiple=8, crop="random"), seed=0)
    for e, b in zip(ds.entries, ds.bucket_of):
        h, w = ds.buckets[b]
        want = {"wide": w > h, "tall": h > w, "square": h == w}[e.path.stem[:-1]]
        assert want, (e.path, ds.buckets[b])
    sampler = ds.batch_sampler(local_batch=2)
    for k in range(9):
        batch = collate([ds[key] for key in sampler.indices(k)])
        assert tuple(batch["media"].shape[2:]) == ds.buckets[sampler.bucket(k)]
    write_mp4(tmp_path / "v" / "wide.mp4", level_frames(4, 32, 64))
    write_mp4(tmp_path / "v" / "square.mp4", level_frames(4, 64, 64))
    vs = MediaFolderDataset(cfg(tmp_path / "v", modality="video", size=32, frames=2, bucketing=True,
                                bucket_multiple=8))
    shapes = {e.path.stem: vs.buckets[b] for e, b in zip(vs.entries, vs.bucket_of)}
    assert shapes["square"] == (32, 32) and shapes["wide"][1] > shapes["wide"][0]
    assert vs[[e.path.stem for e in vs.entries].index("wide")]["media"].shape[2:] == shapes["wide"]



def test_duration_buckets_train_each_clip_at_the_longest_length_it_fills(tmp_path):
    lengths = {"short": 3, "five": 6, "nine": 12, "long": 20}  # source frames; buckets 5, 9 and 17
    for name, n in lengths.items():
        for k in range(2):
            write_mp4(tmp_path / f"{name}{k}.mp4", level_frames(n, 32, 32))
    ds = MediaFolderDataset(cfg(tmp_path, modality="video", size=32, frames=9, frame_buckets=[17, 5, 9]), seed=0)
    got = {e.path.stem[:-1]: ds.bucket_frames[b] for e, b in zip(ds.entries, ds.bucket_of)}
    assert got == {"short": 5, "five": 5, "nine": 9, "long": 17}  # a too-short clip goes to the shortest
    sampler = ds.batch_sampler(local_batch=2)
    for k in range(8):
        batch = collate([ds[key] for key in sampler.indices(k)])
        assert batch["media"].shape[2] == ds.bucket_frames[sampler.bucket(k)]
    short = [i for i, e in enumerate(ds.entries) if e.path.stem.startswith("short")][0]
    item = ds[short]  # too few frames for any bucket: replaced by a clip of its bucket, read at 5 frames
    assert item["media"].shape[1] == 5 and item["bad"] and "too few frames" in item["bad"][0][1]
    # at data.fps the span follows the source's rate: 8 fps sources sampled at 4 fps need twice the frames
    slow = MediaFolderDataset(cfg(tmp_path, modality="video", size=32, frames=5, fps=4.0, frame_buckets=[5, 9]))
    got = {e.path.stem[:-1]: slow.bucket_frames[b] for e, b in zip(slow.entries, slow.bucket_of)}
    assert got == {"short": 5, "five": 5, "nine": 5, "long": 9}
    with pytest.raises(ConfigError, match=r"^frame_buckets: duration buckets are for video, not image"):
        cfg(tmp_path, frame_buckets=[5])
    with pytest.raises(ConfigError, match=r"^frame_buckets: lists a length twice"):
        cfg(tmp_path, modality="video", frame_buckets=[5, 5])


# ------------------------------------------------------------------ decode timeout
class SleepyBackend(PyAVBackend):
    """PyAV, except that opening any file named 'hang*' blocks until released (a hung decoder)."""

    name = "sleepy"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.opened: list[str] = []

    def __getstate__(self):  # an Event does not pickle; this backend only runs in-process
        raise TypeError("in-process only")

    def open(self, path: str):
        self.opened.append(Path(path).name)
        if Path(path).name.startswith("hang"):
            self.release.wait(60)
        return super().open(path)


def test_a_hanging_decode_is_abandoned_as_a_bad_item(tmp_path):
    write_mp4(tmp_path / "hang.mp4", level_frames(6, 32, 64))
    write_mp4(tmp_path / "ok.mp4", level_frames(6, 32, 64))
    backend = SleepyBackend()
    ds = MediaFolderDataset(cfg(tmp_path, modality="video", size=32, frames=2, decode_timeout_s=0.3),
                            video_backend=backend)
    try:
        t0 = time.perf_counter()
        item = ds[0]
        assert time.perf_counter() - t0 < 3
        assert item["bad"] == [(str(tmp_path / "hang.mp4"), "decode timeout: > 0.3 s")]
        assert item["path"] == str(tmp_path / "ok.mp4") and item["media"].shape == (3, 2, 32, 32)
        t0 = time.perf_counter()
        again = ds[0]  # known bad now: not decoded (nor waited for) a second time
        assert time.perf_counter() - t0 < 0.25 and again["bad"] == item["bad"]
        assert backend.opened.count("hang.mp4") == 1
    finally:
        backend.release.set()
