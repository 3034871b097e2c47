"""encode_files / decode_files: exact latents of padded media, original sizes back, file formats, bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from media_factory import (  # noqa: E402
    noisy_frames, pattern_rgb, sine, write_audio, write_image, write_mp4, write_text_file,
)

from mmflow.model_io import save_model  # noqa: E402
from mmflow.modalities import get_modality  # noqa: E402
from mmflow.tokenizers import (  # noqa: E402
    AudioVAE, ImageVAE, PatchDiscriminator, PatchDiscriminatorConfig, VideoVAE, apply_latent_stats, audio_vae_config,
    image_vae_config, video_vae_config,
)
from mmflow.tokenizers.cli_io import (  # noqa: E402
    LATENT_KEY, decode_files, encode_files, load_tokenizer, resolve_tokenizer_dir,
)


def _save(vae, folder: Path, seed: int = 0) -> Path:
    """Save `vae` with made-up latent statistics (so normalisation is not the identity)."""
    g = torch.Generator().manual_seed(seed)
    c = vae.config.latent_channels
    apply_latent_stats(vae, torch.randn(c, generator=g).tolist(), (0.5 + torch.rand(c, generator=g)).tolist())
    save_model(vae, folder)
    return folder


def _latents(path: Path) -> tuple[torch.Tensor, dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(LATENT_KEY), f.metadata()


def _to_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 127.5 - 1.0  # (3, H, W)


@pytest.fixture(scope="module")
def image_tok(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return _save(ImageVAE(image_vae_config("test")), tmp_path_factory.mktemp("tok") / "image")  # f2, 4 channels


def test_image_round_trip_pads_to_the_factor_and_crops_back(tmp_path, image_tok):
    rgb = pattern_rgb(13, 10, seed=1)  # odd height: padded to 14 for the 2x VAE
    src = write_image(tmp_path / "in" / "odd.png", rgb)
    [lat] = encode_files(image_tok, [tmp_path / "in"], tmp_path / "lat")
    assert lat == tmp_path / "lat" / "odd.safetensors"
    z, meta = _latents(lat)
    assert (meta["height"], meta["width"], meta["model_type"], meta["modality"]) == ("13", "10", "image_vae", "image")
    assert meta["source"] == str(src) and meta["tokenizer"] == str(image_tok)
    assert json.loads(meta["latent_shape"]) == [4, 7, 5]
    vae = load_tokenizer(image_tok)[0]
    x = _to_tensor(rgb)
    padded = torch.cat([x, x[:, -1:]], dim=1)  # (3, 14, 10): the last row repeated
    with torch.no_grad():
        expected = vae.encode_latents(padded[None])[0]
        decoded = vae.decode_latents(expected[None])[0, :, :13].clamp(-1, 1)
    torch.testing.assert_close(z, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(z, vae.encode(padded[None]).mean[0])  # stored normalised, not raw
    [png] = decode_files(image_tok, [lat], tmp_path / "out")
    out = np.asarray(Image.open(png))
    assert png.suffix == ".png" and out.shape == (13, 10, 3)
    torch.testing.assert_close(_to_tensor(out), decoded, atol=1.01 / 127.5, rtol=0)  # only 8-bit rounding


def test_video_round_trip_keeps_frames_size_and_rate(tmp_path):
    torch.manual_seed(0)
    tok = _save(VideoVAE(video_vae_config("test")), tmp_path / "video_tok")  # 4x space, 4x time
    frames = noisy_frames(7, 32, 32, seed=2)  # 7 frames: padded to 9 = 1 + 2 * 4
    write_mp4(tmp_path / "in" / "clip.mp4", frames, fps=12, crf=0)
    [lat] = encode_files(tok, [tmp_path / "in" / "clip.mp4"], tmp_path / "lat")
    z, meta = _latents(lat)
    assert z.shape == (4, 3, 8, 8) and meta["num_frames"] == "7" and float(meta["fps"]) == 12.0
    [mp4] = decode_files(tok, [lat], tmp_path / "out")
    with av.open(str(mp4)) as c:
        stream = c.streams.video[0]
        got = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(stream)])
        rate = stream.average_rate
    assert got.shape == (7, 32, 32, 3) and rate == 12 and stream.codec_context.name == "h264"
    vae = load_tokenizer(tok)[0]
    with torch.no_grad():
        expected = vae.decode_latents(z[None])[0, :, :7].clamp(-1, 1)  # (3, 7, 32, 32)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1, 1)
    got_t = torch.from_numpy(got).permute(3, 0, 1, 2).float() / 127.5 - 1
    err = ((got_t - expected) * luma).sum(0).abs().mean()
    assert err < 0.03, err  # luma survives H.264 (crf 17) and 8-bit rounding; yuv420p halves the chroma
    broken = write_text_file(tmp_path / "bad" / "broken.mp4")
    with pytest.raises(ValueError, match=f"{broken}: cannot read it as video"):
        encode_files(tok, [broken], tmp_path / "lat2")


def test_mp4_writer_keeps_frame_order_and_pads_odd_sides(tmp_path):
    levels = torch.linspace(-0.8, 0.8, 6)  # frame t is flat grey at levels[t]
    video = levels.view(1, 6, 1, 1).expand(3, 6, 15, 17).clone()
    video[:, :, -1, :] = 1.0  # a white last row and ...
    video[:, :, :, -1] = -1.0  # ... a black last column: repeated into the padding
    path = get_modality("video").write(video, tmp_path / "v.mp4", fps=25)
    with av.open(str(path)) as c:
        got = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.float64)  # (6, 16, 18, 3)
    assert got.shape == (6, 16, 18, 3)
    mid = got[:, 4:10, 4:10].mean(axis=(1, 2, 3)) / 127.5 - 1
    np.testing.assert_allclose(mid, levels.numpy(), atol=0.03)
    assert got[:, -1, 2:-3].mean() > 240 and got[:, 3:-3, -1].mean() < 15  # padding repeats the edges


def test_audio_is_resampled_to_the_tokenizer_rate_and_cropped_back(tmp_path):
    torch.manual_seed(0)
    tok = _save(AudioVAE(audio_vae_config("test", sample_rate=16000)), tmp_path / "audio_tok")  # hop 8
    write_audio(tmp_path / "in" / "tone.wav", sine(0.1003, 8000, channels=2), 8000)  # 802 stereo samples at 8 kHz
    [lat] = encode_files(tok, [tmp_path / "in" / "tone.wav"], tmp_path / "lat")
    z, meta = _latents(lat)
    assert meta["num_samples"] == "1604" and meta["sample_rate"] == "16000" and meta["source_sample_rate"] == "8000"
    assert z.shape == (8, 201)  # ceil(1604 / 8)
    [wav] = decode_files(tok, [lat], tmp_path / "out")
    wave, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    assert rate == 16000 and wave.shape == (1604, 1)
    vae = load_tokenizer(tok)[0]
    with torch.no_grad():
        expected = vae.decode_latents(z[None])[0, :, :1604].clamp(-1, 1)
    torch.testing.assert_close(torch.from_numpy(wave.T), expected, atol=1.0 / 32767, rtol=0)  # 16-bit PCM


def test_a_run_folder_resolves_to_its_exported_tokenizer_preferring_ema(tmp_path, image_tok):
    models = tmp_path / "run" / "model" / "models"
    save_model(load_tokenizer(image_tok)[0], models / "tokenizer")
    assert resolve_tokenizer_dir(tmp_path / "run") == models / "tokenizer"
    save_model(load_tokenizer(image_tok)[0], models / "tokenizer_ema")
    assert resolve_tokenizer_dir(tmp_path / "run") == models / "tokenizer_ema"
    assert resolve_tokenizer_dir(tmp_path / "run", use_ema=False) == models / "tokenizer"
    assert resolve_tokenizer_dir(tmp_path / "run" / "model") == models / "tokenizer_ema"


def test_bad_input_names_the_thing_at_fault(tmp_path, image_tok):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        encode_files(tmp_path / "nowhere", [tmp_path], tmp_path / "lat")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a tokenizer folder"):
        encode_files(tmp_path / "empty", [tmp_path], tmp_path / "lat")
    save_model(PatchDiscriminator(PatchDiscriminatorConfig(base_channels=4, n_layers=1)), tmp_path / "disc")
    with pytest.raises(ValueError, match="patch_discriminator.*not a tokenizer"):
        encode_files(tmp_path / "disc", [tmp_path], tmp_path / "lat")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        encode_files(image_tok, [tmp_path / "missing.png"], tmp_path / "lat")
    with pytest.raises(FileNotFoundError, match="no image files"):
        encode_files(image_tok, [tmp_path / "empty"], tmp_path / "lat")
    bad = write_text_file(tmp_path / "bad" / "fake.png")
    with pytest.raises(ValueError, match=f"{bad}: cannot read it as image"):
        encode_files(image_tok, [bad], tmp_path / "lat")
    write_image(tmp_path / "a" / "same.png", pattern_rgb(8, 8))
    write_image(tmp_path / "b" / "same.png", pattern_rgb(8, 8))
    with pytest.raises(ValueError, match="would both be written"):
        encode_files(image_tok, [tmp_path / "a", tmp_path / "b"], tmp_path / "lat")
    # decoding: latents of another tokenizer type, of another width, or not latents at all
    torch.manual_seed(0)
    audio_tok = _save(AudioVAE(audio_vae_config("test", sample_rate=8000)), tmp_path / "audio_tok")
    write_audio(tmp_path / "snd" / "tone.wav", sine(0.05, 8000), 8000)
    [lat] = encode_files(audio_tok, [tmp_path / "snd"], tmp_path / "lat")
    fake_wav = write_text_file(tmp_path / "snd2" / "fake.wav")
    with pytest.raises(ValueError, match=f"{fake_wav}: cannot read it as audio"):
        encode_files(audio_tok, [fake_wav], tmp_path / "lat2")
    with pytest.raises(ValueError, match="'audio_vae' tokenizer.*'image_vae'"):
        decode_files(image_tok, [lat], tmp_path / "out")
    wide = _save(ImageVAE(image_vae_config("test", latent_channels=6)), tmp_path / "wide_tok")
    [img_lat] = encode_files(image_tok, [tmp_path / "a"], tmp_path / "lat")
    with pytest.raises(ValueError, match="4 channels.*has 6"):
        decode_files(wide, [img_lat], tmp_path / "out")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="no 'latents' tensor"):
        decode_files(image_tok, [tmp_path / "other.safetensors"], tmp_path / "out")
    write_text_file(tmp_path / "junk.safetensors")
    with pytest.raises(ValueError, match="junk.safetensors: not a readable safetensors"):
        decode_files(image_tok, [tmp_path / "junk.safetensors"], tmp_path / "out")
