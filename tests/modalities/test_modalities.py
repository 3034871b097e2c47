"""The modality specs (mmflow/modalities/): registry, shapes, and write -> read round trips per modality."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from media_factory import pattern_rgb, write_image  # noqa: E402

from mmflow.data.media_folder import MediaFolderConfig  # noqa: E402
from mmflow.data.video_reader import PyAVBackend  # noqa: E402
from mmflow.errors import UserError  # noqa: E402
from mmflow.modalities import MODALITIES, UnknownModality, get_modality  # noqa: E402
from mmflow.modalities.video import MAX_PREVIEW_CLIPS  # noqa: E402

STEP = 1 / 127.5  # one 8-bit level in [-1, 1]


def _cfg(tmp_path: Path, modality: str, **kw) -> MediaFolderConfig:
    cfg = MediaFolderConfig(path=str(tmp_path), modality=modality, **kw)
    cfg.validate()
    return cfg


def _levels(t: int, h: int, w: int) -> torch.Tensor:
    """A clip (3, t, h, w) whose frame i is flat grey at a level that rises with i."""
    return torch.linspace(-0.6, 0.6, t).view(1, t, 1, 1).expand(3, t, h, w).clone()


# ------------------------------------------------------------------ registry
def test_registry_holds_the_three_modalities_under_their_names():
    assert sorted(MODALITIES) == ["audio", "image", "video"]
    for name, spec in MODALITIES.items():
        assert get_modality(name) is spec and spec.name == name
        assert spec.default_crop == spec.crops[0] and spec.suffix.startswith(".")
        assert len(spec.size_keys) == spec.latent_axes


def test_unknown_modality_is_a_user_error_that_lists_the_known_ones():
    with pytest.raises(UnknownModality, match=r"unknown modality 'depth'; known: audio, image, video") as info:
        get_modality("depth")
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)


def test_media_shape_and_tokenizer_fields_follow_the_data_config(tmp_path):
    assert get_modality("image").media_shape(_cfg(tmp_path, "image", size=32)) == (3, 32, 32)
    assert get_modality("video").media_shape(_cfg(tmp_path, "video", size=16, frames=5)) == (3, 5, 16, 16)
    audio = _cfg(tmp_path, "audio", sample_rate=8000, seconds=0.5, channels=2)
    assert get_modality("audio").media_shape(audio) == (2, 4000)
    assert get_modality("audio").tokenizer_fields(audio) == {"sample_rate": 8000, "channels": 2}
    assert get_modality("video").tokenizer_fields(audio) == {"in_channels": 3}
    assert (_cfg(tmp_path, "image").crop_mode, _cfg(tmp_path, "audio").crop_mode) == ("center", "random")


# ------------------------------------------------------------------ image
def test_image_write_read_round_trip_and_header_size(tmp_path):
    spec = get_modality("image")
    x = torch.from_numpy(pattern_rgb(16, 24, seed=3)).permute(2, 0, 1).float() / 127.5 - 1  # exact 8-bit levels
    path = spec.write(x, tmp_path / "a.png")
    with Image.open(path) as img:
        assert (img.format, img.size, img.mode) == ("PNG", (24, 16), "RGB")
    assert spec.header_size(path) == (16, 24)
    got, extras = spec.read(path, _cfg(tmp_path, "image"), (16, 24), torch.Generator())
    assert extras == {}
    torch.testing.assert_close(got, x, atol=STEP / 2, rtol=0)


def test_image_read_file_pads_to_the_vae_factor_and_records_the_size(tmp_path):
    path = write_image(tmp_path / "odd.png", pattern_rgb(13, 10))
    x, meta = get_modality("image").read_file(path, SimpleNamespace(downsample_factor=4))
    assert x.shape == (3, 16, 12) and meta == {"height": 13, "width": 10}
    torch.testing.assert_close(x[:, 13:], x[:, 12:13].expand(-1, 3, -1))  # the last row repeated


# ------------------------------------------------------------------ video
def test_video_write_is_h264_at_the_clip_fps_and_reads_back(tmp_path):
    spec = get_modality("video")
    clip = _levels(5, 16, 32)
    path = spec.write(clip, tmp_path / "c.mp4", fps=12)
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.average_rate == 12
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert frames.shape == (5, 16, 32, 3)
    assert spec.header_size(path) == (16, 32)
    cfg = _cfg(tmp_path, "video", frames=5, clip_start="start", video_backend="pyav")
    got, extras = spec.read(path, cfg, (16, 32), torch.Generator(), backend=PyAVBackend())
    assert extras == {} and got.shape == (3, 5, 16, 32)
    torch.testing.assert_close(got.mean((0, 2, 3)), clip.mean((0, 2, 3)), atol=0.03, rtol=0)  # H.264 is lossy
    assert spec.write(clip, tmp_path / "default.mp4").exists()  # no fps: the default rate


def test_video_read_file_pads_time_and_space_for_the_vae(tmp_path):
    spec = get_modality("video")
    path = spec.write(_levels(6, 16, 32), tmp_path / "c.mp4", fps=10)
    x, meta = spec.read_file(path, SimpleNamespace(temporal_factor=4, spatial_factor=12))
    assert x.shape == (3, 9, 24, 36)  # 6 frames -> 1 + 2 * 4; 16 x 32 -> multiples of 12
    assert meta == {"num_frames": 6, "height": 16, "width": 32, "fps": 10.0}
    torch.testing.assert_close(x[:, 6:], x[:, 5:6].expand(-1, 3, -1, -1))  # the last frame repeated


# ------------------------------------------------------------------ audio
@pytest.mark.parametrize("suffix,fmt", [(".wav", "WAV"), (".flac", "FLAC")])
def test_audio_write_keeps_the_sample_rate_and_reads_back(tmp_path, suffix, fmt):
    spec = get_modality("audio")
    t = torch.arange(800) / 8000
    wave = torch.stack([0.5 * torch.sin(2 * torch.pi * 440 * t), 0.25 * torch.sin(2 * torch.pi * 660 * t)])  # (2, 800)
    path = spec.write(wave, tmp_path / f"a{suffix}", sample_rate=8000)
    info = sf.info(str(path))
    assert (info.format, info.samplerate, info.channels, info.frames) == (fmt, 8000, 2, 800)
    cfg = _cfg(tmp_path, "audio", sample_rate=8000, seconds=0.1, channels=2, crop="start")
    got, extras = spec.read(path, cfg, (0, 0), torch.Generator())
    assert got.shape == (2, 800) and bool(extras["mask"].all())
    assert torch.allclose(extras["timing"], torch.tensor([0.0, 0.1]))  # seconds_start, seconds_total (the file)
    torch.testing.assert_close(got, wave, atol=1e-4, rtol=0)  # 16-bit PCM


def test_audio_write_without_a_sample_rate_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="sample_rate"):
        get_modality("audio").write(torch.zeros(1, 10), tmp_path / "a.wav")


def test_audio_has_no_height_and_width():
    with pytest.raises(NotImplementedError, match="audio media have no height and width"):
        get_modality("audio").header_size("a.wav")


# ------------------------------------------------------------------ previews
def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def test_previews_write_pngs(tmp_path):
    image = get_modality("image").preview(torch.rand(2, 3, 3, 8, 8) * 2 - 1, tmp_path / "i.png", ["a", "b"])
    audio = get_modality("audio").preview(torch.rand(2, 2, 1, 800) * 2 - 1, tmp_path / "a.png", ["a", "b"], title="t")
    assert min(_png_size(image)) > 16 and min(_png_size(audio)) > 100


def test_video_preview_is_a_strip_of_frames_per_row_of_at_most_a_few_clips(tmp_path):
    spec = get_modality("video")
    few = _png_size(spec.preview(torch.zeros(2, 1, 3, 4, 8, 8), tmp_path / "one.png"))
    many = _png_size(spec.preview(torch.zeros(2, MAX_PREVIEW_CLIPS + 3, 3, 4, 8, 8), tmp_path / "many.png"))
    cell = 8 * 2 + 2  # save_image_grid: scale 2, pad 2
    assert few == (4 * cell + 2, 2 * cell + 2)  # 4 frames wide, 2 rows
    assert many == (MAX_PREVIEW_CLIPS * 4 * cell + 2, 2 * cell + 2)


# ------------------------------------------------------------------ provenance metadata
PROVENANCE = {"prompt": "a cat — näive ☕", "seed": 7, "guidance": 3.5, "solver": "heun", "steps": 8,
              "model": "sha256:0123abcd"}


def test_image_metadata_are_png_text_chunks_and_leave_the_pixels_alone(tmp_path):
    spec, x = get_modality("image"), torch.rand(3, 8, 12) * 2 - 1
    path = spec.write(x, tmp_path / "a.png", metadata=PROVENANCE)
    with Image.open(path) as img:
        assert img.text == {k: str(v) for k, v in PROVENANCE.items()}  # what any PNG reader shows
        pixels = np.asarray(img)
    with Image.open(spec.write(x, tmp_path / "bare.png")) as bare:
        assert bare.text == {} and np.array_equal(np.asarray(bare), pixels)
    assert spec.read_metadata(path) == {k: str(v) for k, v in PROVENANCE.items()}
    assert spec.read_metadata(tmp_path / "bare.png") == {}


def test_video_metadata_are_one_json_object_in_the_mp4_comment_tag(tmp_path):
    spec = get_modality("video")
    path = spec.write(_levels(3, 16, 16), tmp_path / "c.mp4", fps=8, metadata=PROVENANCE)
    with av.open(str(path)) as container:
        assert json.loads(container.metadata["comment"]) == PROVENANCE  # read back by PyAV itself
        assert container.streams.video[0].frames == 3
    assert spec.read_metadata(path) == PROVENANCE  # numbers stay numbers
    bare = spec.write(_levels(3, 16, 16), tmp_path / "bare.mp4", fps=8)
    with av.open(str(bare)) as container:
        assert "comment" not in container.metadata
    assert spec.read_metadata(bare) == {}


def test_video_read_metadata_ignores_a_comment_it_did_not_write(tmp_path):
    path = tmp_path / "other.mp4"
    with av.open(str(path), mode="w", format="mp4") as container:
        container.metadata["comment"] = "shot on a phone"
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert get_modality("video").read_metadata(path) == {}


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_audio_metadata_go_to_a_json_sidecar(tmp_path, suffix):
    spec, wave = get_modality("audio"), torch.zeros(1, 400)
    path = spec.write(wave, tmp_path / f"a{suffix}", sample_rate=8000, metadata=PROVENANCE)
    assert json.loads((tmp_path / f"a{suffix}.json").read_text()) == PROVENANCE
    assert spec.read_metadata(path) == PROVENANCE
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"a{suffix}", f"a{suffix}.json"]  # no temporaries left
    spec.write(wave, path, sample_rate=8000)  # rewritten bare: the old sidecar would describe other audio
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"a{suffix}"]
    assert spec.read_metadata(path) == {}
