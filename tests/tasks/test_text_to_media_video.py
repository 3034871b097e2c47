"""text_to_media on VIDEO latents (a small random causal video VAE): the length rules of the tokenizer.

The video VAE takes clips of 1 + 4k frames (frame 0 on its own, then 4 frames per latent frame): a run
trained on 9 frames samples 17 (twice the length, RoPE over time), and a length the tokenizer cannot take
is refused with the nearest valid counts, at sampling and in a recipe.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from media_factory import noisy_frames, write_mp4  # noqa: E402

from mmflow.config import ConfigError  # noqa: E402
from mmflow.model_io import save_model  # noqa: E402
from mmflow.pipeline import FlowPipeline  # noqa: E402
from mmflow.sampling.layout import WrongOutputRequest  # noqa: E402
from mmflow.tasks import recipe_from_dict  # noqa: E402
from mmflow.tasks.text_to_media import TextToMediaTask  # noqa: E402
from mmflow.tokenizers import VideoVAE  # noqa: E402
from mmflow.tokenizers.video_vae import video_vae_config  # noqa: E402
from mmflow.train.trainer import Trainer, make_accelerator  # noqa: E402

PROMPTS = ["a red square", "a green circle"]


def _recipe(root: Path, frames: int) -> dict:
    torch.manual_seed(0)
    vae = save_model(VideoVAE(video_vae_config("test", latent_channels=4)), root / "vae")
    media = root / "media"
    media.mkdir()
    for i in range(4):
        write_mp4(media / f"{i}.mp4", noisy_frames(9, 16, 16, seed=i))
    (media / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"{i}.mp4", "text": PROMPTS[i % 2]}) + "\n"
                                                  for i in range(4)))
    return {"name": "t2v", "task": "text_to_media", "seed": 0, "run_dir": str(root / "run"),
            "data": {"path": str(media), "modality": "video", "frames": frames, "size": 16, "fps": 8.0,
                     "use_cache": "off", "eval_per_prompt": 1},
            "model": {"tokenizer": str(vae), "text": {"encoders": [{"path": "minilm", "max_length": 8}]},
                      "mmdit": {"preset": "test", "patch_size": [1, 2, 2]}},
            "flow": {"cfg_dropout": 0.2},
            "train": {"batch_size": 4, "max_steps": 2, "lr": 1e-3, "log_every": 1, "checkpoint_every": 2,
                      "trackers": [], "ema_decay": None},
            "sample": {"steps": 2, "num_samples": 1, "guidance": 2.0, "solver": "euler"}}


def _train(root: Path, frames: int, first_frame: float = 0.0) -> Path:
    raw = _recipe(root, frames)
    raw["model"]["first_frame"] = first_frame
    recipe = recipe_from_dict(raw, source="test")
    Trainer(recipe, TextToMediaTask(recipe), root / "run", accelerator=make_accelerator(recipe.train, root / "run")).train()
    return root / "run"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("t2v"), frames=9)


@pytest.fixture(scope="module")
def i2v_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("i2v"), frames=9, first_frame=0.5)


def test_a_latent_video_model_samples_its_length_and_twice_it(run) -> None:
    pipe = FlowPipeline.from_pretrained(run)
    assert tuple(pipe.task.latent_shape()) == (4, 3, 4, 4)  # 9 frames -> 3 latent frames, 16 px -> 4
    assert pipe(PROMPTS[:1], seed=0).media.shape == (1, 3, 9, 16, 16)
    longer = pipe(PROMPTS[:1], seed=0, num_frames=17).media
    assert longer.shape == (1, 3, 17, 16, 16) and torch.isfinite(longer).all()


def test_a_length_the_tokenizer_cannot_take_is_refused_with_the_nearest_valid_ones(run) -> None:
    pipe = FlowPipeline.from_pretrained(run)
    with pytest.raises(WrongOutputRequest, match=r"num_frames=10: .* 1 \+ 4k frames \(the nearest: 9 or 13\)"):
        pipe(PROMPTS[:1], num_frames=10)


def test_a_recipe_whose_clip_length_the_tokenizer_cannot_take_names_data_frames(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"data\.frames: .* \(the nearest: 9 or 13\)"):
        _train(tmp_path, frames=10)


def test_image_to_video_starts_with_the_given_frame_as_the_tokenizer_reproduces_it(i2v_run) -> None:
    pipe = FlowPipeline.from_pretrained(i2v_run)
    assert pipe.velocity.config.concat_channels == 5  # 4 latent channels + the mask
    image = torch.linspace(-1, 1, 3 * 16 * 16).view(3, 16, 16)
    out = pipe(PROMPTS, num_per_prompt=2, seed=0, image=image)
    assert out.media.shape == (4, 3, 9, 16, 16) and out.settings["first_frame"] == "tensor"
    enc = pipe.task.encoders
    own = enc.decode(enc.encode(image[None, :, None]), like_shape=(1, 3, 1, 16, 16)).clamp(-1, 1)  # (1, 3, 1, 16, 16)
    assert torch.allclose(out.media[:, :, 0], own[:, :, 0].expand(4, -1, -1, -1), atol=1e-4)
    # the condition reaches the model: other images, other clips after frame 0 (same seed, same text)
    other = pipe(PROMPTS, num_per_prompt=2, seed=0, image=-image)
    assert not torch.allclose(out.media[:, :, 1:], other.media[:, :, 1:])
    text_only = pipe(PROMPTS, num_per_prompt=2, seed=0)  # the same model makes clips from text alone
    assert text_only.media.shape == out.media.shape and not torch.allclose(text_only.media, out.media)


def test_image_to_video_is_refused_by_text_only_models_and_for_a_wrong_image_count(run, i2v_run) -> None:
    image = torch.zeros(3, 16, 16)
    with pytest.raises(WrongOutputRequest, match=r"trained from text only \(model.first_frame: 0\)"):
        FlowPipeline.from_pretrained(run)(PROMPTS[:1], image=image)
    with pytest.raises(WrongOutputRequest, match="3 images for 2 prompts"):
        FlowPipeline.from_pretrained(i2v_run)(PROMPTS, image=[image] * 3)


def test_first_frame_training_is_for_video_recipes(tmp_path) -> None:
    raw = _recipe(tmp_path, 9)
    raw["data"] = {**raw["data"], "modality": "image"}
    raw["data"].pop("frames"), raw["data"].pop("fps")
    raw["model"]["first_frame"] = 0.5
    raw["model"]["mmdit"]["patch_size"] = [2, 2]
    with pytest.raises(ConfigError, match="model.first_frame: .* applies to video recipes, this one is image"):
        recipe_from_dict(raw, source="test")
