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
from media_factory import noisy_frames, pattern_rgb, write_image, write_jsonl, write_mp4  # noqa: E402

from torch import Tensor  # noqa: E402

from mmflow.data.cache import read_index  # noqa: E402
from mmflow.config import ConfigError  # noqa: E402
from mmflow.model_io import save_model  # noqa: E402
from mmflow.pipeline import FlowPipeline  # noqa: E402
from mmflow.sampling.layout import WrongOutputRequest  # noqa: E402
from mmflow.tasks import recipe_from_dict  # noqa: E402
from mmflow.tasks.media_cache import prepare_cache  # noqa: E402
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


def _joint_recipe(root: Path, **data) -> dict:
    """The clip recipe plus an image folder trained as 1-frame clips (half of each batch), image-to-video on."""
    raw = _recipe(root, 9)
    images = root / "images"
    images.mkdir()
    for i in range(3):
        write_image(images / f"{i}.png", pattern_rgb(16, 16, seed=i))
    write_jsonl(images / "metadata.jsonl", [{"file_name": f"{i}.png", "text": PROMPTS[i % 2]} for i in range(3)])
    raw["data"] = {**raw["data"], "images": {"path": str(images), "fraction": 0.5}, **data}
    raw["model"]["first_frame"] = 0.5
    return raw


def _first_batch(task: TextToMediaTask) -> dict:
    data = task.build_dataset()
    keys = next(iter(task.batch_sampler(data, 4, 0, 1, 0, 0)))
    assert [source for source, _ in keys] == [0, 0, 1, 1]  # clips, then images
    return task.collate([data[k] for k in keys])


def _train_recipe(recipe) -> Path:
    run = Path(recipe.run_dir)
    Trainer(recipe, TextToMediaTask(recipe), run, accelerator=make_accelerator(recipe.train, run)).train()
    return run


def test_joint_image_video_batches_from_raw_media_keep_each_image_exact(tmp_path) -> None:
    recipe = recipe_from_dict(_joint_recipe(tmp_path), source="test")
    task = TextToMediaTask(recipe)
    batch = _first_batch(task)
    assert batch["media"].shape == (4, 3, 9, 16, 16) and batch["frames"].tolist() == [9, 9, 1, 1]
    # padded as still clips, an image's frame-0 latent is what the image alone encodes to (the causal VAE)
    enc = task.encoders
    alone = enc.encode(batch["media"][2:, :, :1])  # (2, 4, 1, 4, 4)
    assert torch.allclose(enc.encode(batch["media"][2:])[:, :, :1], alone, atol=1e-5)
    assert task._latent_frames(batch, alone).tolist() == [3, 3, 1, 1]
    run = _train_recipe(recipe)
    pipe = FlowPipeline.from_pretrained(run)  # the clip model it trained samples clips
    assert pipe(PROMPTS[:1], seed=0).media.shape == (1, 3, 9, 16, 16)


def test_joint_recipes_cache_their_images_as_one_frame_latents_and_train_from_both_caches(tmp_path) -> None:
    raw = _joint_recipe(tmp_path, use_cache="require", cache=str(tmp_path / "cache"))
    recipe = recipe_from_dict(raw, source="test")
    task = TextToMediaTask(recipe)
    parts = task.cache_parts()
    assert [p.cache_dir() for p in parts] == [tmp_path / "cache", tmp_path / "cache-images"]
    accelerator = make_accelerator(recipe.train, tmp_path / "run")
    assert [prepare_cache(p, accelerator).cached for p in parts] == [4, 3]
    # 9-frame clips at data.frames 9: a random clip start has no choice, so the clips' cache serves every seed
    # (the images' never depended on it: centre crops)
    clips, images = (read_index(p.cache_dir()) for p in parts)
    assert clips["independent_of"] == ["seed"] and "seed" not in clips["describe"] and "seed" not in images["describe"]
    batch = _first_batch(task)
    assert batch["latent_mean"].shape == (4, 4, 3, 4, 4) and batch["frames"].tolist() == [3, 3, 1, 1]
    image = _image_as_clip(raw["data"]["images"]["path"], batch["index"][2])
    mean = task.encoders.tokenizer.encode(image[None]).mean  # (1, 4, 1, 4, 4)
    assert torch.allclose(batch["latent_mean"][2, :, :1], mean[0], atol=1e-5)
    _train_recipe(recipe)


def _image_as_clip(folder: str, index: Tensor) -> Tensor:
    """Image `index` of `folder` as a 1-frame clip (3, 1, 16, 16)."""
    from mmflow.data.joint import ImagesAsClips
    from mmflow.data.media_folder import MediaFolderConfig

    return ImagesAsClips(MediaFolderConfig(path=folder, modality="image", size=16)).load(int(index))["media"]


def test_joint_training_is_refused_for_image_recipes_and_batches_without_room(tmp_path) -> None:
    raw = _joint_recipe(tmp_path)
    bad = {**raw, "data": {**raw["data"], "modality": "image"}, "model": {**raw["model"], "first_frame": 0.0}}
    bad["data"].pop("frames"), bad["data"].pop("fps")
    bad["model"]["mmdit"] = {**raw["model"]["mmdit"], "patch_size": [2, 2]}
    with pytest.raises(ConfigError, match="data.images.path: joint image\\+video training is for video recipes"):
        recipe_from_dict(bad, source="test")
    small = {**raw, "train": {**raw["train"], "batch_size": 1}}
    with pytest.raises(ConfigError, match="train.batch_size: .*at least 2 rows"):
        recipe_from_dict(small, source="test")


def test_duration_buckets_train_clips_of_several_lengths_and_are_checked_against_the_tokenizer(tmp_path) -> None:
    raw = _recipe(tmp_path, 9)
    for i in range(2):  # two sources too short for 9 frames
        write_mp4(Path(raw["data"]["path"]) / f"{i}.mp4", noisy_frames(6, 16, 16, seed=i))
    raw["data"]["frame_buckets"] = [5, 9]
    raw["train"]["batch_size"] = 2
    recipe = recipe_from_dict(raw, source="test")
    task = TextToMediaTask(recipe)
    data = task.build_dataset()
    assert [data.bucket_frames[b] for b in data.bucket_of] == [5, 5, 9, 9]
    sampler = task.batch_sampler(data, 2, 0, 1, 0, 0)
    lengths = [task.collate([data[k] for k in sampler.indices(s)])["media"].shape[2] for s in range(2)]
    assert sorted(lengths) == [5, 9]  # the two steps the run takes: one batch of each length
    _train_recipe(recipe)
    with pytest.raises(ConfigError, match=r"data\.frame_buckets: .* 10 frames: .*\(the nearest: 9 or 13\)"):
        TextToMediaTask(recipe_from_dict({**raw, "data": {**raw["data"], "frame_buckets": [5, 10]}}, source="test")
                        ).latent_shape()
    with pytest.raises(ConfigError, match=r"data\.use_cache: the cache holds one clip length"):
        recipe_from_dict({**raw, "data": {**raw["data"], "use_cache": "auto"}}, source="test")
