import numpy as np
import torch
from PIL import Image

from mmflow.utils.images import save_image_grid, to_uint8


def test_to_uint8_maps_range_and_moves_channels():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    out = to_uint8(x)
    assert out.shape == (1, 2, 2, 3)
    assert out[0, :, :, 0].tolist() == [[0, 128], [255, 255]]


def test_rgb_grid_has_grey_margins_and_white_labels(tmp_path):
    images = torch.zeros(2, 3, 3, 8, 8)  # mid grey tiles
    path = save_image_grid(images, tmp_path / "g.png", row_labels=["a", "b"], title="t")
    px = np.asarray(Image.open(path).convert("RGB"))
    assert tuple(px[-1, -1]) == (64, 64, 64)  # the bottom-right padding is neutral grey, not dark red
    label_pixels = px[:, :8].reshape(-1, 3)
    bright = label_pixels[label_pixels.sum(1) > 600]
    assert len(bright) > 0
    assert (bright[:, 0] == bright[:, 1]).all() and (bright[:, 1] == bright[:, 2]).all()  # white text, not red


def test_grey_grid_keeps_one_band(tmp_path):
    path = save_image_grid(torch.zeros(1, 2, 1, 4, 4), tmp_path / "g.png")
    img = Image.open(path)
    assert img.mode == "L" and img.getpixel((0, 0)) == 64
