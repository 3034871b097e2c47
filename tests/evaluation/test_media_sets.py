"""Tests for mmflow/evaluation/media_sets.py: folders of media as evaluation sets."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from media_factory import sine, write_audio, write_image, write_mp4, write_zero_byte  # noqa: E402

from mmflow.errors import MissingInput  # noqa: E402
from mmflow.evaluation.media_sets import MediaSetError, load_media_set  # noqa: E402
from mmflow.modalities import UnknownModality  # noqa: E402


def _images(root: Path, sizes=(16, 16, 16, 24), captions: bool = True) -> Path:
    rows = []
    for i, s in enumerate(sizes):
        write_image(root / f"{i}.png", np.full((s, s, 3), 40 * i, np.uint8))
        rows.append({"file_name": f"{i}.png", "text": f"item {i}"})
    if captions:
        (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_an_imagefolder_reads_whole_files_with_captions_batched_by_shape(tmp_path) -> None:
    media = load_media_set(_images(tmp_path / "real"))
    assert media.modality == "image" and len(media) == 4 and media.captions == [f"item {i}" for i in range(4)]
    batches = list(media.batches(2))
    assert [(tuple(x.shape), idx) for x, idx in batches] == [((2, 3, 16, 16), [0, 1]), ((1, 3, 16, 16), [2]),
                                                             ((1, 3, 24, 24), [3])]
    assert batches[0][0].min() >= -1 and batches[0][0].max() <= 1


def test_bad_files_are_skipped_and_named_not_fatal(tmp_path) -> None:
    root = _images(tmp_path / "real", captions=False)
    write_zero_byte(root / "broken.png")
    media = load_media_set(root)
    got = [i for _, idx in media.batches(8) for i in idx]
    assert len(got) == 4 and len(media.skipped) == 1 and "broken.png" in media.skipped[0][0]
    assert "empty" in media.skipped[0][1]


def test_sample_output_uses_its_index_and_ignores_the_preview(tmp_path) -> None:
    root = tmp_path / "fake"
    for i in range(3):
        write_image(root / f"sample_{i:04d}.png", np.zeros((8, 8, 3), np.uint8))
    write_image(root / "samples.png", np.zeros((8, 24, 3), np.uint8))  # the preview grid
    rows = [{"file": f"sample_{i:04d}.png", "input": ["a cat", "a cat", "a dog"][i], "seed": i} for i in range(3)]
    (root / "samples.json").write_text(json.dumps({"samples": rows}))
    media = load_media_set(root)
    assert [f.name for f in media.files] == [f"sample_{i:04d}.png" for i in range(3)]
    assert media.captions == ["a cat", "a cat", "a dog"]


def test_audio_is_resampled_and_video_read_whole(tmp_path) -> None:
    write_audio(tmp_path / "a" / "x.wav", sine(0.5, 8000), 8000)
    [(wave, _)] = load_media_set(tmp_path / "a").batches(4, sample_rate=16000, channels=1)
    assert wave.shape == (1, 1, 8000)
    write_mp4(tmp_path / "v" / "x.mp4", np.zeros((5, 16, 16, 3), np.uint8))
    [(clip, _)] = load_media_set(tmp_path / "v").batches(4)
    assert clip.shape == (1, 3, 5, 16, 16)


def test_what_cannot_be_one_set_is_refused_naming_what_the_folder_holds(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(MediaSetError, match="holds no media files"):
        load_media_set(tmp_path / "empty")
    mixed = _images(tmp_path / "mixed", captions=False)
    write_audio(mixed / "x.wav", sine(0.1, 8000), 8000)
    with pytest.raises(MediaSetError, match=r"several modalities \(1 audio, 4 image\)"):
        load_media_set(mixed)
    assert load_media_set(mixed, modality="audio").modality == "audio"  # or pick one
    with pytest.raises(MediaSetError, match="holds no video files"):
        load_media_set(mixed, modality="video")
    with pytest.raises(UnknownModality, match="'depth'"):
        load_media_set(mixed, modality="depth")
    with pytest.raises(MissingInput, match="absent"):
        load_media_set(tmp_path / "absent")


def test_the_fingerprint_follows_the_contents(tmp_path) -> None:
    root = _images(tmp_path / "real")
    before = load_media_set(root).fingerprint()
    assert load_media_set(root).fingerprint() == before
    write_image(root / "0.png", np.full((16, 16, 3), 7, np.uint8))
    assert load_media_set(root).fingerprint() != before


def test_a_second_pass_names_a_bad_file_once(tmp_path) -> None:
    root = _images(tmp_path / "real", captions=False)
    write_zero_byte(root / "broken.png")
    media = load_media_set(root)
    for _ in range(2):  # e.g. the features pass, then the CLIP pass
        list(media.batches(8))
    assert len(media.skipped) == 1
