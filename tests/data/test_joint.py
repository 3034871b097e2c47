"""Tests for mmflow/data/joint.py: images as 1-frame clips in the batches of a video recipe."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from media_factory import pattern_rgb, write_image, write_jsonl  # noqa: E402

from mmflow.data.joint import (FRAMES, ImagesAsClips, JointBatchSampler, JointDataset, collate_padded,  # noqa: E402
                               image_rows)
from mmflow.data.media_folder import MediaFolderConfig, MediaFolderDataset, collate  # noqa: E402


def test_image_rows_rounds_and_keeps_one_of_each_kind() -> None:
    assert image_rows(32, 0.25) == 8 and image_rows(4, 0.01) == 1 and image_rows(4, 0.99) == 3
    with pytest.raises(ValueError, match="at least 2 rows"):
        image_rows(1, 0.5)


def test_images_read_as_one_frame_clips(tmp_path) -> None:
    for i in range(3):
        write_image(tmp_path / f"{i}.png", pattern_rgb(16, 16, seed=i))
    write_jsonl(tmp_path / "metadata.jsonl", [{"file_name": f"{i}.png", "text": f"image {i}"} for i in range(3)])
    cfg = MediaFolderConfig(path=str(tmp_path), modality="image", size=16)
    clips, images = ImagesAsClips(cfg), MediaFolderDataset(cfg)
    item = clips[(1, 0)]
    assert item["media"].shape == (3, 1, 16, 16) and item["text"] == "image 1"
    assert torch.equal(item["media"][:, 0], images[(1, 0)]["media"])
    assert clips[(1, 0, 8, 16)]["media"].shape == (3, 1, 8, 16)  # read at its batch's bucket size


def test_with_aspect_buckets_the_images_of_a_batch_take_its_clips_size() -> None:
    sizes = {0: (8, 16), 1: (16, 8)}
    sampler = JointBatchSampler(iter([[0], [1], [2]]), iter([[(5, 0)], [(6, 0)], [(7, 1)]]),
                                size_at=lambda k: sizes[k % 2], start=3)
    assert list(sampler) == [[(0, 0), (1, (5, 0, 16, 8))], [(0, 1), (1, (6, 0, 8, 16))], [(0, 2), (1, (7, 1, 16, 8))]]


def test_batches_are_clips_then_images_and_pad_to_the_longest_with_still_frames() -> None:
    video = [{"media": torch.randn(3, 5, 4, 4), "text": f"clip {i}"} for i in range(4)]
    images = [{"media": torch.randn(3, 1, 4, 4), "text": f"image {i}"} for i in range(2)]
    data = JointDataset(video, images)
    assert len(data) == 6 and data[4]["text"] == "image 0" and data[(1, 1)]["text"] == "image 1"
    sampler = JointBatchSampler(iter([[0, 1], [2, 3]]), iter([[1], [0]]))
    assert list(sampler) == [[(0, 0), (0, 1), (1, 1)], [(0, 2), (0, 3), (1, 0)]]
    items = [data[k] for k in [(0, 2), (1, 1)]]
    batch = collate_padded(items, lambda its: {"media": torch.stack([it["media"] for it in its])})
    assert batch["media"].shape == (2, 3, 5, 4, 4) and batch[FRAMES].tolist() == [5, 1]
    assert torch.equal(batch["media"][0], video[2]["media"])
    still = images[1]["media"].expand(-1, 5, -1, -1)  # the image repeated: a still clip
    assert torch.equal(batch["media"][1], still)


def test_cached_latents_pad_mean_and_std_together() -> None:
    items = [{"latent_mean": torch.randn(4, 3, 2, 2), "latent_std": torch.rand(4, 3, 2, 2), "index": 0},
             {"latent_mean": torch.randn(4, 1, 2, 2), "latent_std": torch.rand(4, 1, 2, 2), "index": 1}]
    batch = collate_padded(items, torch.utils.data.default_collate)
    assert batch["latent_mean"].shape == batch["latent_std"].shape == (2, 4, 3, 2, 2)
    assert batch[FRAMES].tolist() == [3, 1] and batch["index"].tolist() == [0, 1]
    assert torch.equal(batch["latent_std"][1, :, 2], items[1]["latent_std"][:, 0])


def test_raw_items_keep_the_media_collate_fields(tmp_path) -> None:
    items = [{"media": torch.zeros(3, 5, 4, 4), "text": "a", "index": 0, "path": "a.mp4", "bad": [], "meta": {}},
             {"media": torch.zeros(3, 1, 4, 4), "text": "b", "index": 0, "path": "b.png", "bad": [("x", "y")], "meta": {}}]
    batch = collate_padded(items, collate)
    assert batch["text"] == ["a", "b"] and batch["bad"] == [("x", "y")] and batch[FRAMES].tolist() == [5, 1]
