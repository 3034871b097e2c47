"""Image-to-video conditioning helpers: the concatenated first frame + mask, and reading first frames."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from mmflow.sampling.layout import WrongOutputRequest
from mmflow.tasks.first_frame import first_frame_concat, read_first_frames, with_first_frame


def test_the_concat_holds_the_first_latent_frame_and_a_mask_for_given_rows_only() -> None:
    z0 = torch.randn(3, 4, 1, 2, 2)
    out = first_frame_concat(z0, frames=5, given=torch.tensor([True, False, True]))
    assert out.shape == (3, 5, 5, 2, 2)
    assert torch.equal(out[0, :4, 0], z0[0, :, 0]) and torch.equal(out[2, :4, 0], z0[2, :, 0])
    assert not out[1].any()  # a row without its first frame: zeros, mask 0 (text-to-video)
    assert torch.equal(out[:, 4, 0], torch.tensor([1.0, 0.0, 1.0]).view(3, 1, 1).expand(3, 2, 2))
    assert not out[:, :, 1:].any()  # later frames carry nothing
    assert torch.equal(first_frame_concat(z0, 5), first_frame_concat(z0, 5, torch.ones(3, dtype=torch.bool)))


def test_with_first_frame_replaces_frame_zero_only() -> None:
    x, z0 = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 1, 2, 2)
    y = with_first_frame(x, z0)
    assert torch.equal(y[:, :, :1], z0) and torch.equal(y[:, :, 1:], x[:, :, 1:])


def test_first_frames_of_the_wrong_size_are_resized_with_a_warning(tmp_path, caplog) -> None:
    Image.fromarray(np.full((20, 40, 3), 200, np.uint8)).save(tmp_path / "wide.png")
    Image.fromarray(np.full((16, 16, 3), 10, np.uint8)).save(tmp_path / "fits.png")
    with caplog.at_level(logging.WARNING, logger="mmflow.sampling"):
        frames = read_first_frames([tmp_path / "wide.png", tmp_path / "fits.png", torch.zeros(3, 8, 8)], (16, 16))
    assert frames.shape == (3, 3, 16, 16) and frames.min() >= -1 and frames.max() <= 1
    assert abs(frames[0].mean().item() - (200 / 127.5 - 1)) < 0.02 and abs(frames[1].mean().item() - (10 / 127.5 - 1)) < 1e-6
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2 and "wide.png is 20x40 (HxW); the model makes 16x16 clips" in warned[0]


def test_bad_first_frames_are_named() -> None:
    with pytest.raises(WrongOutputRequest, match="no-such.png: no such file"):
        read_first_frames(["no-such.png"], (16, 16))
    with pytest.raises(WrongOutputRequest, match=r"shaped \(3, H, W\) in \[-1, 1\], got \(4, 8, 8\)"):
        read_first_frames([torch.zeros(4, 8, 8)], (16, 16))
