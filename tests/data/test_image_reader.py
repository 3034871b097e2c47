"""Image reading: EXIF orientation, mode conversion, cover-resize + crop, deterministic random crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from media_factory import (pattern_rgb, truncate, write_image, write_jpeg_with_orientation, write_text_file,
                           write_zero_byte)
from PIL import Image

from mmflow.data.bad_items import BadMedia
from mmflow.data.image_reader import cover_box, image_size, open_image, read_image


def as_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a)).permute(2, 0, 1).float() / 127.5 - 1


def test_png_at_its_own_size_is_exact(tmp_path):
    a = pattern_rgb(24, 40)
    x = read_image(write_image(tmp_path / "a.png", a), (24, 40))
    assert x.dtype == torch.float32 and x.shape == (3, 24, 40)
    assert torch.equal(x, as_tensor(a))
    assert x.min() >= -1 and x.max() <= 1


def test_center_crop_without_scaling_is_the_middle_window(tmp_path):
    a = pattern_rgb(40, 64)
    x = read_image(write_image(tmp_path / "a.png", a), 40, crop="center")
    assert torch.equal(x, as_tensor(a[:, 12:52]))
    y = read_image(write_image(tmp_path / "t.png", pattern_rgb(64, 40)), 40, crop="center")
    assert torch.equal(y, as_tensor(pattern_rgb(64, 40)[12:52]))


def test_random_crop_is_a_window_chosen_by_the_generator(tmp_path):
    a = pattern_rgb(32, 64, seed=3)
    path = write_image(tmp_path / "a.png", a)
    offsets = []
    for seed in range(12):
        x = read_image(path, 32, crop="random", generator=torch.Generator().manual_seed(seed))
        again = read_image(path, 32, crop="random", generator=torch.Generator().manual_seed(seed))
        assert torch.equal(x, again)  # same generator state, same crop
        matches = [o for o in range(33) if torch.equal(x, as_tensor(a[:, o : o + 32]))]
        assert len(matches) == 1  # exactly one unscaled window of the source
        offsets.append(matches[0])
    assert len(set(offsets)) > 4  # the offset really depends on the generator


def test_shorter_side_is_resized_then_center_cropped(tmp_path):
    a = np.zeros((64, 128, 3), np.uint8)
    a[:, :64] = (255, 0, 0)
    a[:, 64:] = (0, 0, 255)
    x = read_image(write_image(tmp_path / "a.png", a), 32)  # 64x128 -> 32x64 -> middle 32x32
    assert x.shape == (3, 32, 32)
    # the middle window holds the colour edge in its centre: red left half, blue right half
    assert torch.allclose(x[:, :, :14], torch.tensor([1.0, -1, -1])[:, None, None].expand(3, 32, 14), atol=1e-6)
    assert torch.allclose(x[:, :, 18:], torch.tensor([-1.0, -1, 1])[:, None, None].expand(3, 32, 14), atol=1e-6)
    box = cover_box((64, 128), (32, 32))
    assert box == (32.0, 0.0, 96.0, 64.0)


@pytest.mark.parametrize("orientation, stored_to_displayed", [
    (6, lambda a: np.rot90(a, k=-1)),  # rotate 90 degrees clockwise to display
    (8, lambda a: np.rot90(a, k=1)),
    (3, lambda a: np.rot90(a, k=2)),
])
def test_exif_orientation_is_applied(tmp_path, orientation, stored_to_displayed):
    a = np.zeros((32, 64, 3), np.uint8)
    a[:, :32] = 40   # dark left half
    a[:, 32:] = 220  # bright right half
    a[:8, :8] = (255, 0, 0)  # a red corner to tell rotations from flips
    path = write_jpeg_with_orientation(tmp_path / "r.jpg", a, orientation)
    want = stored_to_displayed(a)
    assert image_size(path) == want.shape[:2]
    x = read_image(path, want.shape[:2])
    assert x.shape == (3, *want.shape[:2])
    assert (x - as_tensor(np.ascontiguousarray(want))).abs().mean() < 0.05  # JPEG loss only


def test_rgba_is_composited_on_white(tmp_path):
    a = np.zeros((8, 8, 4), np.uint8)
    a[:, :4] = (255, 0, 0, 255)  # opaque red
    a[:, 4:6] = (0, 0, 0, 0)     # fully transparent
    a[:, 6:] = (0, 0, 0, 128)    # half-transparent black over white = mid grey
    x = read_image(write_image(tmp_path / "a.png", a, "RGBA"), 8)
    assert torch.allclose(x[:, :, :4], torch.tensor([1.0, -1, -1])[:, None, None].expand(3, 8, 4))
    assert torch.allclose(x[:, :, 4:6], torch.ones(3, 8, 2))
    assert torch.allclose(x[:, :, 6:], torch.full((3, 8, 2), 127 / 127.5 - 1), atol=1.5 / 127.5)


def test_grayscale_palette_and_16_bit(tmp_path):
    g = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    x = read_image(write_image(tmp_path / "g.png", g, "L"), 8)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert torch.equal(x[0], torch.from_numpy(g).float() / 127.5 - 1)

    p = Image.new("P", (8, 8))
    p.putpalette([10, 20, 30, 200, 100, 0] + [0] * 762)
    p.putdata([0] * 32 + [1] * 32)
    p.save(tmp_path / "p.png")
    y = read_image(tmp_path / "p.png", 8)
    assert torch.allclose(y[:, 0, 0], torch.tensor([10, 20, 30]) / 127.5 - 1)
    assert torch.allclose(y[:, 7, 7], torch.tensor([200, 100, 0]) / 127.5 - 1)
    p.info["transparency"] = 1
    p.save(tmp_path / "pt.png", transparency=1)
    assert torch.allclose(read_image(tmp_path / "pt.png", 8)[:, 7, 7], torch.ones(3))  # transparent -> white

    w = np.array([[0, 65535], [32896, 65535]], np.uint16)  # 32896 = 128 * 257
    Image.fromarray(w).save(tmp_path / "w16.png")
    z = read_image(tmp_path / "w16.png", 2)
    assert torch.equal(z[0], torch.tensor([[0, 255], [128, 255]]).float() / 127.5 - 1)


def test_large_jpeg_draft_decoding_matches_full_decoding(tmp_path):
    a = pattern_rgb(480, 640, seed=1)
    path = write_image(tmp_path / "big.jpg", a, quality=95)
    fast = read_image(path, 48)
    full = open_image(path)  # no draft
    ref = full.resize((48, 48), Image.Resampling.BICUBIC, box=cover_box((480, 640), (48, 48)))
    assert (fast - as_tensor(np.asarray(ref))).abs().max() < 0.1


def test_bad_images_raise_bad_media(tmp_path):
    with pytest.raises(BadMedia, match="^empty file"):
        read_image(write_zero_byte(tmp_path / "z.png"), 8)
    with pytest.raises(BadMedia, match="^decode error"):
        read_image(write_text_file(tmp_path / "t.png"), 8)
    with pytest.raises(BadMedia, match="^decode error"):
        read_image(truncate(write_image(tmp_path / "tr.png", pattern_rgb(64, 64)), 0.5), 8)
    with pytest.raises(BadMedia, match="^decode error"):
        read_image(truncate(write_image(tmp_path / "tr.jpg", pattern_rgb(64, 64)), 0.3), 8)
    with pytest.raises(BadMedia, match="^missing file"):
        read_image(tmp_path / "nope.png", 8)
