"""Video reading: frame choice, decord/PyAV parity, fallback, frame-count verification, broken files."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from media_factory import frame_level, level_frames, noisy_frames, truncate, write_mp4, write_text_file, write_zero_byte

from mmflow.data.bad_items import BadMedia
from mmflow.data.video_reader import (PyAVBackend, VideoBackendUnavailable, count_packets, get_video_backend,
                                      read_video, sample_frame_indices, video_size)


def levels_of(x: torch.Tensor) -> list[int]:
    """(3, T, H, W) in [-1, 1] of flat level frames -> the frame index each one shows."""
    means = ((x + 1) * 127.5).mean(dim=(0, 2, 3))
    return [round((float(m) - 16) / 12) for m in means]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """20 frames, 32x64, 8 fps, a keyframe every 4 frames (so PyAV has to seek)."""
    return write_mp4(tmp_path_factory.mktemp("v") / "clip.mp4", level_frames(20, 32, 64), gop=4)


def test_sample_frame_indices():
    assert sample_frame_indices(20, 4, stride=3, start="start") == [0, 3, 6, 9]
    assert sample_frame_indices(30, 4, src_fps=30, fps=8, start="start") == [0, 4, 8, 11]  # 3.75 apart
    firsts = set()
    for seed in range(30):
        g = torch.Generator().manual_seed(seed)
        idx = sample_frame_indices(20, 4, stride=3, generator=g)
        assert idx == sample_frame_indices(20, 4, stride=3, generator=torch.Generator().manual_seed(seed))
        assert np.diff(idx).tolist() == [3, 3, 3] and 0 <= idx[0] and idx[-1] <= 19
        firsts.add(idx[0])
    assert firsts == set(range(11))  # every start that fits, and no other
    with pytest.raises(BadMedia, match=r"^too few frames: 5 < 8$"):
        sample_frame_indices(5, 8, start="start")
    with pytest.raises(BadMedia, match=r"^too few frames: 9 < 10$"):
        sample_frame_indices(9, 4, stride=3)
    assert sample_frame_indices(5, 8, short="loop") == [0, 1, 2, 3, 4, 0, 1, 2]
    assert sample_frame_indices(5, 4, stride=2, short="loop") == [0, 2, 4, 1]
    with pytest.raises(BadMedia, match="^no frames"):
        sample_frame_indices(0, 1, short="loop")


@pytest.mark.parametrize("backend", ["decord", "pyav", "auto"])
def test_backends_read_the_asked_frames(clip, backend):
    b = get_video_backend(backend)
    f = b.open(str(clip))
    assert (f.num_frames, f.fps) == (20, 8.0)
    for idx in ([0, 1, 2], [13, 5, 17], [19], [6, 6, 11], [0, 4]):  # re-reads must seek back
        frames = f.read(idx)
        assert frames.shape == (len(idx), 32, 64, 3) and frames.dtype == np.uint8
        means = frames.reshape(len(idx), -1).mean(1)
        assert np.abs(means - [frame_level(i) for i in idx]).max() < 5
    f.close()


def test_decord_and_pyav_give_the_same_clip(clip):
    kw = {"size": 32, "frames": 6, "stride": 2, "crop": "random"}
    a = read_video(clip, get_video_backend("decord"), generator=torch.Generator().manual_seed(7), **kw)
    b = read_video(clip, get_video_backend("pyav"), generator=torch.Generator().manual_seed(7), **kw)
    assert a.shape == b.shape == (3, 6, 32, 32)
    assert (a - b).abs().max() <= 4 / 127.5  # same H.264 stream; only the YUV->RGB rounding may differ
    first = levels_of(a)[0]
    assert levels_of(a) == list(range(first, first + 12, 2)) and first <= 9


def test_fps_sampling_and_start(clip):
    b = get_video_backend("pyav")
    by_fps = read_video(clip, b, 32, 5, fps=4.0, start="start")  # 8 fps source at 4 fps = every 2nd frame
    by_stride = read_video(clip, b, 32, 5, stride=2, start="start")
    assert torch.equal(by_fps, by_stride) and levels_of(by_fps) == [0, 2, 4, 6, 8]
    x = read_video(clip, b, (16, 32), 4, start="start")  # resized to cover, no crop needed
    assert x.shape == (3, 4, 16, 32) and levels_of(x) == [0, 1, 2, 3]
    assert x.min() >= -1 and x.max() <= 1


def test_short_clips_skip_or_loop(clip):
    b = get_video_backend("decord")
    with pytest.raises(BadMedia, match=r"^too few frames: 20 < 24$"):
        read_video(clip, b, 32, 24)
    x = read_video(clip, b, 32, 24, short="loop")
    assert levels_of(x) == list(range(20)) + [0, 1, 2, 3]


def test_auto_falls_back_to_pyav_when_decord_cannot_decode(tmp_path):
    path = write_mp4(tmp_path / "w48.mp4", level_frames(6, 32, 48))  # decord 0.6 fails on width 48
    with pytest.raises(BadMedia, match="^decode error: decord"):
        read_video(path, get_video_backend("decord"), 32, 4, start="start")
    x = read_video(path, get_video_backend("auto"), 32, 4, start="start")
    assert levels_of(x) == [0, 1, 2, 3]


def test_frame_count_is_clamped_to_packets_really_present(tmp_path):
    path = truncate(write_mp4(tmp_path / "t.mp4", noisy_frames(20), faststart=True), 0.6)
    pyav = get_video_backend("pyav")
    f = pyav.open(str(path))
    assert f.num_frames == 20  # what the header still claims
    f.close()
    real = count_packets(path)
    assert 3 < real < 20
    # asking for more than is really there is "too few frames", not an error deep inside a decoder
    with pytest.raises(BadMedia, match=rf"^too few frames: {real} < 20$"):
        read_video(path, get_video_backend("auto"), 32, 20, start="start")
    x = read_video(path, get_video_backend("auto"), 32, real - 2, start="start")
    assert levels_of(x) == list(range(real - 2))


def test_broken_videos_raise_bad_media(tmp_path):
    good = write_mp4(tmp_path / "g.mp4", level_frames(8, 32, 64))
    cut = truncate(write_mp4(tmp_path / "cut.mp4", level_frames(8, 32, 64)), 0.5)  # index (moov) at the end: lost
    for name in ("auto", "decord", "pyav"):
        b = get_video_backend(name)
        with pytest.raises(BadMedia, match="^empty file"):
            read_video(write_zero_byte(tmp_path / "z.mp4"), b, 32, 2)
        with pytest.raises(BadMedia, match="^decode error"):
            read_video(write_text_file(tmp_path / "t.mp4"), b, 32, 2)
        with pytest.raises(BadMedia, match="^decode error"):
            read_video(cut, b, 32, 2)
        with pytest.raises(BadMedia, match="^missing file"):
            read_video(tmp_path / "gone.mp4", b, 32, 2)
    assert video_size(good) == (32, 64)
    with pytest.raises(BadMedia, match="^decode error"):
        video_size(tmp_path / "t.mp4")


def test_torchcodec_only_when_installed(clip):
    if importlib.util.find_spec("torchcodec") is None:
        with pytest.raises(VideoBackendUnavailable, match="video_backend = 'torchcodec'.*cannot be imported"):
            get_video_backend("torchcodec")
    else:
        x = read_video(clip, get_video_backend("torchcodec"), 32, 4, start="start")
        assert levels_of(x) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="unknown backend 'opencv'"):
        get_video_backend("opencv")


class OverReporting(PyAVBackend):
    """PyAV, but the header 'claims' 30 frames, like containers whose count is duration x fps."""

    def open(self, path: str):
        f = super().open(path)
        f.num_frames = 30
        return f


def test_an_over_reported_frame_count_is_clamped_before_choosing_frames(tmp_path):
    path = write_mp4(tmp_path / "ten.mp4", level_frames(10, 32, 64))
    b = OverReporting()
    with pytest.raises(BadMedia, match=r"^too few frames: 10 < 16$"):  # judged on the 10 frames really there
        read_video(path, b, 32, 16, start="start")
    for seed in range(8):  # random starts are drawn within the real frames
        x = read_video(path, b, 32, 6, generator=torch.Generator().manual_seed(seed))
        assert levels_of(x)[-1] <= 9
    # trusting the header instead picks frames that do not exist: a decode error at best
    with pytest.raises(BadMedia, match="not decodable"):
        for seed in range(8):
            read_video(path, b, 32, 6, generator=torch.Generator().manual_seed(seed), verify_frames=False)
