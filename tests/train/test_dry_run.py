"""`mmflow train RECIPE --dry-run` (mmflow/train/dry_run.py): every shipped recipe dry-runs from an empty
folder without its data or weights, writes nothing, and its numbers match a hand count."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from mmflow.cli import main
from mmflow.config import ConfigError
from mmflow.train.config import MULTI_GPU_CONFIG
from mmflow.train.dry_run import Distribution, distribution_from_args, dry_run, read_accelerate_config
from mmflow.train.memory import ACTIVATION_BYTES
from tests.conftest import REPO

RECIPES = sorted((REPO / "recipes").glob("*.yaml")) + sorted((REPO / "tokenizers").glob("*.yaml"))
SD3 = REPO / "recipes" / "image_t2i_sd3_2b.yaml"
GPU_RECIPES = [SD3, REPO / "recipes" / "video_t2v_gpu.yaml", REPO / "recipes" / "audio_t2m_gpu.yaml"]
MULTI8 = REPO / MULTI_GPU_CONFIG
MULTI16 = REPO / "recipes" / "accelerate" / "multi_gpu_2x8gpu.yaml"
EMOJI = REPO / "recipes" / "emoji_image.yaml"
NO_PLUGIN = ("train.sharding=none", "train.ema_decay=null")  # what accelerate's FSDP plugin can train


def _fsdp_plugin_config(folder: Path, version: int = 1, **fsdp: object) -> Path:
    """A user's accelerate config with the FSDP plugin (none ships: the shipped recipes keep an EMA) over 8 GPUs."""
    path = folder / f"fsdp{version}_8gpu.yaml"
    options = {"fsdp_version": version, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
               "fsdp_transformer_layer_cls_to_wrap": "MMDiTBlock", "fsdp_state_dict_type": "FULL_STATE_DICT",
               **({"fsdp_sharding_strategy": "FULL_SHARD"} if version == 1 else {}), **fsdp}
    path.write_text(yaml.safe_dump({"compute_environment": "LOCAL_MACHINE", "distributed_type": "FSDP",
                                    "mixed_precision": "bf16", "num_machines": 1, "num_processes": 8,
                                    "fsdp_config": options}))
    return path


def _dry(args: list[str], cwd: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    rc = main(["train", *args, "--dry-run"])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_recipe_dry_runs_and_writes_nothing(recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    runs_before = sorted((REPO / "runs").iterdir()) if (REPO / "runs").is_dir() else []
    extra = ["--accelerate-config", str(MULTI8)] if recipe in GPU_RECIPES else ["--num-gpus", "2"]
    if "checkpoints/" in recipe.read_text():  # a shipped tokenizer, found from the repository root as users run
        (tmp_path / "checkpoints").symlink_to(REPO / "checkpoints")
    before = sorted(tmp_path.iterdir())
    rc, out, err = _dry([str(recipe), *extra], tmp_path, capsys, monkeypatch)  # ../shared is not beside tmp_path
    assert rc == 0, out + err
    assert "nothing read, nothing written" in out and "total per GPU" in out and "trained in all" in out
    if recipe in GPU_RECIPES:  # the launch their headers give: the trainer's own sharding, 8 ways
        assert "distribution: train.sharding fsdp2 (FULL_SHARD) over 8 GPUs, 8-way shards" in out, out
    assert sorted(tmp_path.iterdir()) == before  # no run folder, no cache, no logs
    assert (sorted((REPO / "runs").iterdir()) if (REPO / "runs").is_dir() else []) == runs_before


def test_small_recipe_matches_a_hand_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """emoji_image: the meta build's parameters are the real model's; tokens and memory by hand."""
    from mmflow.tasks import get_task_class, load_recipe
    from mmflow.text.encoder import TextEncoder, TextEncoderConfig

    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(EMOJI)
    real = get_task_class(recipe.task)(recipe).build_models()["velocity"]  # on CPU, real tensors
    p = sum(t.numel() for t in real.parameters())
    minilm = sum(t.numel() for t in TextEncoder(TextEncoderConfig(path="minilm", max_length=16)).parameters())
    report = dry_run(str(EMOJI), (), Distribution(processes=2, describe="2 GPUs"))
    counts = {m.name: m.parameters for m in report.models}
    assert counts == {"velocity": p, "text:minilm": minilm}
    # 32x32 pixels / patch 2 = 16 x 16 latent tokens, + 16 MiniLM tokens; 32 per GPU x 2 GPUs
    assert report.tokens == {"latent": 256, "text": 16}
    assert report.tokens_per_step == 272 * 64
    m = report.memory  # fp32 (no mixed precision): activations 2 x 34 bytes; DDP: nothing sharded
    assert (m.weights, m.grads, m.optimizer, m.ema) == (4 * p, 4 * p, 8 * p, 4 * p)
    assert m.frozen == 4 * minilm
    assert m.activations == 32 * 272 * 192 * 6 * 2 * ACTIVATION_BYTES

    sharded = dry_run(str(EMOJI), ("model.gradient_checkpointing=true", "train.mixed_precision=bf16"),
                      distribution_from_args(None, 4, True))
    block = max(sum(t.numel() for t in b.parameters()) for b in real.blocks)
    m = sharded.memory  # FSDP over 4: states / 4, plus two gathered bf16 blocks; checkpointing: inputs + one block
    assert (m.grads, m.optimizer, m.ema) == (p, 2 * p, p)
    assert m.weights == p + 2 * block * 2
    assert m.activations == 32 * 272 * 192 * (4 * 6 + ACTIVATION_BYTES)


def test_sd3_recipe_sizes_and_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU recipe without its weights: published model sizes, SD3's text layout, 16-way shards of its
    train.sharding fsdp2 over two machines' MULTI_GPU launch."""
    monkeypatch.chdir(tmp_path)
    dist = read_accelerate_config(str(MULTI16))
    assert (dist.processes, dist.machines, dist.shards, dist.fsdp_version) == (16, 2, 1, 0)  # DDP by itself
    report = dry_run(str(SD3), (), dist)
    assert (report.distribution.shards, report.distribution.wrap_class) == (16, "MMDiTBlock")
    assert "over 16 GPUs (2 machines x 8), 16-way shards" in report.distribution.describe
    counts = {m.name: m.parameters for m in report.models}
    assert 2.00e9 < counts["velocity"] < 2.05e9  # SD3-medium's MM-DiT: 2.03B
    assert counts["text:clip_l"] == 123_650_304 and 694e6 < counts["text:clip_g"] < 696e6
    assert 4.75e9 < counts["text:t5"] < 4.77e9 and 83e6 < counts["tokenizer"] < 85e6
    assert report.tokens["text"] == 77 + 256 and report.tokens["latent"] == (512 // 16) ** 2
    assert report.global_batch == 32 * 16
    assert report.memory.grads == 4 * counts["velocity"] / 16
    assert any("assumed t5-xxl" in m.note for m in report.models)


def test_fsdp_plugin_configs_and_recipe_sharding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """accelerate's FSDP plugin, fsdp_version 1 or 2, reads as FULL_SHARD over its processes; the recipe's own
    train.sharding fsdp2 over a MULTI_GPU launch shards alike (without an EMA, the only way the plugin trains)."""
    monkeypatch.chdir(tmp_path)
    v1, v2 = (read_accelerate_config(str(_fsdp_plugin_config(tmp_path, v))) for v in (1, 2))
    assert (v2.processes, v2.shards, v2.wrap_class, v2.fsdp_version) == (8, 8, "MMDiTBlock", 2)
    assert v1.fsdp_version == 1 and "FSDP FULL_SHARD" in v1.describe and "FSDP2 FULL_SHARD" in v2.describe
    plugin1, plugin2 = dry_run(str(SD3), NO_PLUGIN, v1), dry_run(str(SD3), NO_PLUGIN, v2)
    own = dry_run(str(SD3), ("train.ema_decay=null",), read_accelerate_config(str(MULTI8)))
    assert plugin1.memory == plugin2.memory == own.memory
    assert own.distribution.shards == 8 and "train.sharding fsdp2" in own.distribution.describe
    keep = read_accelerate_config(str(_fsdp_plugin_config(tmp_path, 2, fsdp_reshard_after_forward=False)))
    assert any("stay from its forward" in n for n in dry_run(str(SD3), NO_PLUGIN, keep).notes)


@pytest.mark.parametrize("version", [1, 2])
def test_fsdp_plugin_is_refused_with_the_recipe_sharding_or_an_ema(version: int, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """As the trainer refuses them before any work (mmflow.train.config.check_fsdp_plugin): the plugin would shard
    train.sharding fsdp2's models twice, and the EMA cannot copy a model the plugin wrapped (seen on an H200)."""
    plugin = _fsdp_plugin_config(tmp_path, version)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(ConfigError, match="shard them twice") as e:
        dry_run(str(SD3), (), read_accelerate_config(str(plugin)))  # as shipped: fsdp2 and an EMA
    assert e.value.key == "train.sharding"
    rc, _, err = _dry([str(SD3), "--accelerate-config", str(plugin), "train.sharding=none"], work, capsys,
                      monkeypatch)
    refusal = (f"train.ema_decay: 0.9999 (an EMA) cannot train under accelerate's FSDP plugin "
               f"(distributed_type: FSDP in {plugin})")
    assert rc == 2 and refusal in err, err
    assert "accelerator.prepare" in err and MULTI_GPU_CONFIG in err and "train.ema_decay: null" in err
    rc, out, err = _dry([str(SD3), "--accelerate-config", str(plugin), *NO_PLUGIN], work, capsys, monkeypatch)
    assert rc == 0 and "8-way shards" in out, err
    assert list(work.iterdir()) == []


def test_accelerate_configs_named_in_recipes_and_readme_exist_and_match_the_gpu_recipes() -> None:
    """Every recipes/accelerate/ file a recipe, the README or mmflow names is shipped; each config a GPU recipe's
    header launches with reads as MULTI_GPU (the trainer's own sharding, which keeps the EMA) at its precision."""
    texts = {p: p.read_text() for p in [*RECIPES, REPO / "README.md", *sorted((REPO / "mmflow").rglob("*.py"))]}
    named = {(p, m) for p, t in texts.items() for m in re.findall(r"recipes/accelerate/[\w.-]+\.yaml", t)}
    assert not [(str(p.relative_to(REPO)), m) for p, m in named if not (REPO / m).is_file()]
    for recipe in GPU_RECIPES:
        train = yaml.safe_load(texts[recipe])["train"]
        configs = sorted(m for p, m in named if p == recipe)
        assert train["sharding"] == "fsdp2" and MULTI_GPU_CONFIG in configs, recipe
        for config in configs:
            dist = read_accelerate_config(str(REPO / config))
            assert dist.fsdp_version == 0 and dist.processes > 1, config
            assert dist.mixed_precision == train["mixed_precision"], config


def test_wrong_wrap_class_and_unknown_encoder_are_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    bad = _fsdp_plugin_config(tmp_path, fsdp_transformer_layer_cls_to_wrap="DiTBlock")
    work = tmp_path / "work"
    work.mkdir()
    rc, _, err = _dry([str(SD3), "--accelerate-config", str(bad), *NO_PLUGIN], work, capsys, monkeypatch)
    assert rc == 2 and "fsdp_transformer_layer_cls_to_wrap" in err and "MMDiTBlock" in err, err
    renamed = [str(SD3), "model.text.encoders.2.name=big_text"]
    rc, _, err = _dry(renamed, work, capsys, monkeypatch)
    assert rc == 2 and "--assume big_text=" in err and "t5-xxl" in err, err
    rc, out, err = _dry([*renamed, "--assume", "big_text=t5-xxl"], work, capsys, monkeypatch)
    assert rc == 0 and "text:big_text" in out, err
    assert list(work.iterdir()) == []


def test_distribution_flags_without_dry_run_are_refused(capsys) -> None:
    assert main(["train", str(REPO / "recipes" / "toy2d.yaml"), "--fsdp", "--num-gpus", "8"]) == 2
    err = capsys.readouterr().err
    assert "--num-gpus, --fsdp only apply with --dry-run" in err


def test_lora_counts_adapters_as_trained_and_the_base_in_its_dtype(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train.lora: parameters, gradients, AdamW states and EMA are the adapters'; the base is frozen, bf16."""
    from mmflow.models.lora import LoraConfig, add_lora
    from mmflow.tasks import get_task_class, load_recipe

    monkeypatch.chdir(tmp_path)
    lora = ("train.init_from=nowhere/base", "train.lora.rank=4", "train.lora.targets=[attention,mlp]",
            "train.mixed_precision=bf16", "train.frozen_dtype=bfloat16", "model.gradient_checkpointing=true")
    recipe = load_recipe(EMOJI)
    real = get_task_class(recipe.task)(recipe).build_models()["velocity"]
    p = sum(t.numel() for t in real.parameters())
    buffers = sum(t.numel() * t.element_size() for t in real.buffers())
    add_lora(real, LoraConfig(rank=4, targets=["attention", "mlp"]))
    a = sum(t.numel() for t in real.parameters() if t.requires_grad)
    assert 0 < a < p / 10
    report = dry_run(str(EMOJI), lora, Distribution())
    counts = {m.name: (m.parameters, m.role) for m in report.models}
    assert counts["velocity"] == (a, "trained (+EMA)") and counts["velocity base"] == (p, "frozen")
    m = report.memory
    assert (m.weights, m.grads, m.optimizer, m.ema) == (4 * a, 4 * a, 8 * a, 4 * a)  # the adapters only
    assert m.base == 2 * p + buffers  # bf16 base
    assert m.activations == 32 * 272 * 192 * (4 * 6 + ACTIVATION_BYTES)  # checkpointed, as without LoRA
    assert any("nowhere/base is not here and names no known model" in n for n in report.notes)
    full32 = dry_run(str(EMOJI), (*lora[:4], "train.frozen_dtype=float32"), Distribution()).memory
    assert full32.base == 4 * p + buffers


def test_sd35_lora_recipe_fits_one_24gb_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """recipes/finetune_sd35_lora.yaml without its weights: SD3.5-medium's published model, adapters trained."""
    monkeypatch.chdir(tmp_path)
    report = dry_run(str(REPO / "recipes" / "finetune_sd35_lora.yaml"), (), Distribution())
    counts = {m.name: m.parameters for m in report.models}
    assert 2.24e9 < counts["velocity base"] < 2.25e9  # + the 226M-entry position table: SD3.5-medium's 2.47B
    assert 5e6 < counts["velocity"] < 20e6  # rank-16 attention adapters
    assert report.memory.optimizer == 8 * counts["velocity"]
    assert report.memory.total < 22 * 1024**3  # 24 GB, less the CUDA context and fragmentation
    assert any("the published sd3.5-medium" in n for n in report.notes)
    with pytest.raises(Exception, match="pos_embed_max_size: 192 here, 384 there"):
        dry_run(str(REPO / "recipes" / "finetune_sd35_lora.yaml"), ("model.mmdit.pos_embed_max_size=192",),
                Distribution())


def test_a_meanflow_teacher_is_counted_as_frozen_float32(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    plain = dry_run(str(EMOJI), ("flow.objective=meanflow",), Distribution())
    taught = dry_run(str(EMOJI), ("flow.objective=meanflow", "flow.meanflow.teacher=nowhere/teacher"), Distribution())
    velocity = {m.name: m.parameters for m in plain.models}["velocity"]
    lines = {m.name: (m.parameters, m.role) for m in taught.models}
    assert lines["meanflow teacher"] == (velocity, "frozen") and "meanflow teacher" not in {m.name for m in plain.models}
    assert taught.memory.frozen == plain.memory.frozen + 4 * velocity
    assert any("flow.meanflow.teacher nowhere/teacher is not here" in n for n in taught.notes)
