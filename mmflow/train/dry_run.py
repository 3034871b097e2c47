"""`mmflow train RECIPE --dry-run`: what a run would build and need, without reading data or writing anything.

The task's models are built on the meta device (shapes, no memory, no weights), so a GPU-scale recipe is
checked on a laptop: parameters per model (trained / frozen), tokens per step, and the per-GPU memory of
mmflow.train.memory under the distribution an Accelerate config file describes (`--accelerate-config`)
or `--num-gpus N [--fsdp]`, with the recipe's mixed precision. Frozen components (text encoders, the
tokenizer) are sized from their config.json; where a folder is missing here, a published model of
mmflow.train.known_models stands in (matched by name, or `--assume KEY=NAME`) and the report says so.
Missing data folders are only listed: the dry run never opens them.

    mmflow train recipes/image_t2i_sd3_2b.yaml --dry-run --accelerate-config recipes/accelerate/multi_gpu_8gpu.yaml
    mmflow train recipes/emoji_image.yaml --dry-run --num-gpus 2
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import yaml
from torch import nn

from mmflow.config import ConfigError, build_with_overrides, input_paths, to_dict
from mmflow.data.buckets import make_buckets
from mmflow.models.lora import add_lora
from mmflow.models.mmdit import MMDiT
from mmflow.text.combine import TextConditionerConfig
from mmflow.train.config import TrainConfig, check_fsdp_plugin
from mmflow.train.init_from import check_init_config, check_same_config, init_model_folder
from mmflow.train.known_models import (EncoderShape, TokenizerShape, encoder_present, encoder_shape, known_velocity,
                                       meta_parameters, tokenizer_shape)
from mmflow.train.lora_training import cast_frozen
from mmflow.train.memory import BlockStack, MemoryEstimate, estimate_memory

__all__ = ["Distribution", "DryRunReport", "ShapeOnlyEncoders", "distribution_from_args", "dry_run",
           "read_accelerate_config", "run_dry", "with_recipe_sharding"]

STAND_IN_ENCODER = "minilm"  # validates a missing encoder's recipe entry in its place (the shapes come from the table)


# ---------------------------------------------------------------------------------------------- distribution
@dataclass(frozen=True)
class Distribution:
    """processes in all (over `machines`); shards: GPUs a parameter is split over (1: DDP / one GPU)."""

    processes: int = 1
    machines: int = 1
    shards: int = 1
    wrap_class: str | None = None  # FSDP's transformer wrap unit, checked against the built models
    mixed_precision: str | None = None  # the config file's, compared with the recipe's
    describe: str = "one process"
    fsdp_version: int = 0  # accelerate's FSDP plugin: 1 or 2; 0 = none (DDP, one process, or --fsdp)
    note: str | None = None  # said under the report
    source: str | None = None  # the accelerate config file it was read from


_SHARDING = {"FULL_SHARD": "full", "1": "full", "HYBRID_SHARD": "hybrid", "4": "hybrid", "NO_SHARD": "none", "3": "none"}


def _gpus(processes: int, machines: int) -> str:
    """'16 GPUs (2 machines x 8)': the GPUs of a distribution, for its description."""
    return f"{processes} GPUs" + (f" ({machines} machines x {processes // machines})" if machines > 1 else "")


def read_accelerate_config(path: str) -> Distribution:
    """The distribution an `accelerate launch --config_file` YAML describes (MULTI_GPU, FSDP, NO)."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError("file not found", "--accelerate-config", path) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"not YAML: {e}", "--accelerate-config", path) from None
    if not isinstance(raw, dict):
        raise ConfigError("the top level must be a mapping", None, path)
    processes, machines = int(raw.get("num_processes", 1)), int(raw.get("num_machines", 1))
    if processes < 1 or machines < 1 or processes % machines:
        raise ConfigError(f"{processes} processes do not split evenly over {machines} machines", "num_processes", path)
    kind = str(raw.get("distributed_type", "NO"))
    where = _gpus(processes, machines)
    mp = raw.get("mixed_precision")
    if kind != "FSDP":
        return Distribution(processes, machines, 1, None, mp, f"DDP over {where} ({path})", source=path)
    fsdp = raw.get("fsdp_config") or {}
    version, note = fsdp.get("fsdp_version", 1), None
    if version not in (1, 2, "1", "2"):
        raise ConfigError(f"{version!r}: accelerate's FSDP is version 1 or 2", "fsdp_config.fsdp_version", path)
    if int(version) == 2:  # FSDP2 has no strategy names: FULL_SHARD is "reshard after forward"
        reshard = fsdp.get("fsdp_reshard_after_forward", True)
        reshard = {"true": True, "false": False}.get(str(reshard).lower(), reshard)
        if not isinstance(reshard, bool):
            raise ConfigError(f"{reshard!r}: FSDP2 takes true or false", "fsdp_config.fsdp_reshard_after_forward", path)
        strategy, mode = ("FULL_SHARD", "full") if reshard else ("SHARD_GRAD_OP", "full")
        if not reshard:
            note = ("fsdp_reshard_after_forward false: every block's gathered weights stay from its forward to its "
                    "backward, on top of the estimate (trained parameters x 2 bytes in bf16, x 4 in fp32)")
    else:
        strategy = str(fsdp.get("fsdp_sharding_strategy", "FULL_SHARD"))
        mode = _SHARDING.get(strategy)
        if mode is None:
            raise ConfigError(f"{strategy!r}: the dry run estimates FULL_SHARD, HYBRID_SHARD and NO_SHARD",
                              "fsdp_config.fsdp_sharding_strategy", path)
    shards = {"full": processes, "hybrid": processes // machines, "none": 1}[mode]
    wrap = fsdp.get("fsdp_transformer_layer_cls_to_wrap")
    name = "FSDP2" if int(version) == 2 else "FSDP"
    return Distribution(processes, machines, shards, wrap, mp,
                        f"{name} {strategy} over {where}, {shards}-way shards ({path})", int(version), note, path)


def with_recipe_sharding(dist: Distribution, train: TrainConfig) -> Distribution:
    """`dist` as a recipe with `train` trains under it: train.sharding fsdp2 shards over every process, one unit
    per MMDiTBlock (mmflow/train/parallelize.py). Under accelerate's FSDP plugin, what the trainer refuses
    (check_fsdp_plugin: fsdp2 sharding, an EMA) is refused here too."""
    if dist.fsdp_version:
        check_fsdp_plugin(train, dist.processes, dist.source)
    if train.sharding != "fsdp2" or dist.processes == 1:
        return dist
    n = dist.processes
    launch = f" ({dist.source})" if dist.source else ""
    return dataclasses.replace(dist, shards=n, wrap_class="MMDiTBlock", describe=f"train.sharding fsdp2 (FULL_SHARD) "
                               f"over {_gpus(n, dist.machines)}, {n}-way shards{launch}")


def distribution_from_args(accelerate_config: str | None, num_gpus: int | None, fsdp: bool) -> Distribution:
    """From `--accelerate-config FILE`, or `--num-gpus N` (DDP) with `--fsdp` (FULL_SHARD over N), or one process."""
    if accelerate_config is not None:
        if num_gpus is not None or fsdp:
            raise ConfigError("give --accelerate-config or --num-gpus/--fsdp, not both", "--accelerate-config")
        return read_accelerate_config(accelerate_config)
    n = num_gpus or 1
    if fsdp:
        return Distribution(n, 1, n, None, None, f"FSDP FULL_SHARD over {n} GPUs (--num-gpus {n} --fsdp)")
    return Distribution(n, 1, 1, None, None, f"DDP over {n} GPUs (--num-gpus {n})" if n > 1 else "one process")


# ---------------------------------------------------------------------------------------------- recipe
def _load(recipe_path: str, overrides: Sequence[str]) -> tuple[Any, dict[int, str]]:
    """The typed recipe, and {encoder index: its path} for the text encoders whose folders are missing here:
    those entries were validated with the default encoder's path in place (their shapes come from the table)."""
    from mmflow.tasks import recipe_from_dict

    missing: dict[int, str] = {}

    def build(raw: dict, source: str) -> Any:
        encoders = ((raw.get("model") or {}).get("text") or {}).get("encoders") if raw.get("task") == "text_to_media" else None
        if isinstance(encoders, list):
            for i, entry in enumerate(encoders):
                if isinstance(entry, dict) and not encoder_present(entry):
                    from mmflow.text.encoder import TextEncoderConfig

                    key = TextEncoderConfig(path=str(entry.get("path", "")), name=str(entry.get("name", ""))).key
                    missing[i] = str(entry.get("path", ""))
                    encoders[i] = {**entry, "path": STAND_IN_ENCODER, "name": key, "tokenizer": "", "kind": "auto"}
        return recipe_from_dict(raw, source)

    return build_with_overrides(build, recipe_path, overrides), missing


class ShapeOnlyEncoders:
    """Stands in for a TextToMediaTask's MediaEncoders in a dry run: the widths and latent shapes its
    build_models reads, from config files (or known models), no weights."""

    def __init__(self, text: TextConditionerConfig, shapes: list[EncoderShape], tokenizer: TokenizerShape | None) -> None:
        # a TextConditionerConfig of EncoderShapes: the real layout code gives the combined widths
        self.layout = TextConditionerConfig(encoders=shapes, width=text.width, null_mode=text.null_mode)  # type: ignore[arg-type]
        self.shapes, self.tokenizer_shape = shapes, tokenizer

    @property
    def has_tokenizer(self) -> bool:
        return self.tokenizer_shape is not None

    @property
    def context_dim(self) -> int:
        return self.layout.out_width

    @property
    def pooled_dim(self) -> int:
        return self.layout.pooled_width

    @property
    def seq_len(self) -> int:
        return self.layout.seq_len

    def latent_shape(self, media_shape: Sequence[int]) -> tuple[int, ...]:
        return tuple(media_shape) if self.tokenizer_shape is None else self.tokenizer_shape.latent_shape(tuple(media_shape))


# ---------------------------------------------------------------------------------------------- report
@dataclass
class ModelLine:
    name: str
    parameters: int
    role: str  # "trained (+EMA)", "trained", "frozen"
    note: str = ""


@dataclass
class DryRunReport:
    recipe: str
    task: str
    distribution: Distribution
    models: list[ModelLine]
    micro_batch: int
    global_batch: int
    tokens: dict[str, int]  # per item: "latent", "text", "latent (largest bucket)", ...
    memory: MemoryEstimate
    mixed_precision: str
    gradient_checkpointing: bool
    notes: list[str] = field(default_factory=list)

    @property
    def tokens_per_item(self) -> int:
        return self.tokens.get("latent (largest bucket)", self.tokens.get("latent", 0)) + self.tokens.get("text", 0)

    @property
    def tokens_per_step(self) -> int:
        return self.tokens_per_item * self.global_batch

    def lines(self) -> list[str]:
        d = self.distribution
        out = [f"dry run of {self.recipe} (task {self.task}): nothing read, nothing written",
               f"distribution: {d.describe}; mixed precision {self.mixed_precision}; "
               f"gradient checkpointing {'on' if self.gradient_checkpointing else 'off'}",
               "models (meta device):"]
        for m in self.models:
            out.append(f"  {m.name:<16} {m.parameters:>15,d}  {m.parameters / 1e6:10.1f}M  {m.role}"
                       + (f"  [{m.note}]" if m.note else ""))
        for role in ("trained", "frozen"):
            total = sum(m.parameters for m in self.models if m.role.startswith(role))
            out.append(f"  {role + ' in all':<16} {total:>15,d}  {total / 1e6:10.1f}M")
        out.append(f"batch: {self.micro_batch} per GPU, {self.global_batch} per step "
                   f"({self.micro_batch} x {d.processes} processes x {self.global_batch // (self.micro_batch * d.processes)} "
                   f"accumulated)")
        if self.tokens:
            parts = ", ".join(f"{k} {v:,d}" for k, v in self.tokens.items())
            out.append(f"tokens: {parts} per item; {self.tokens_per_item:,d} x {self.global_batch} = "
                       f"{self.tokens_per_step:,d} per step")
        out.append("memory per GPU (rough, see mmflow/train/memory.py; ~1 GiB CUDA context on top):")
        out += self.memory.lines()
        out += [f"note: {n}" for n in self.notes]
        return out


# ---------------------------------------------------------------------------------------------- the dry run
def _text_to_media_setup(task: Any, missing: Mapping[int, str], assume: Mapping[str, str],
                         notes: list[str]) -> tuple[dict[str, int], list[ModelLine], int]:
    """Point the task at shape-only encoders; its tokens per item, frozen model lines and frozen bytes."""
    recipe = task.recipe
    text = recipe.model.text
    shapes = [encoder_shape(dataclasses.replace(e, path=missing[i]) if i in missing else e, i not in missing, assume)
              for i, e in enumerate(text.encoders)]
    tok = tokenizer_shape(recipe.model.tokenizer, assume) if recipe.model.tokenizer else None
    task.encoders = ShapeOnlyEncoders(text, shapes, tok)
    frozen = [ModelLine(f"text:{s.key}", s.parameters, "frozen", f"{s.dtype}, {s.source}") for s in shapes]
    frozen_bytes = sum(s.bytes for s in shapes)
    if tok is not None:
        frozen.append(ModelLine("tokenizer", tok.parameters, "frozen", f"float32, {tok.source}"))
        frozen_bytes += 4 * tok.parameters
    patch = recipe.model.mmdit.patch_size
    data = recipe.data

    def latent_tokens(media_shape: Sequence[int]) -> int:
        return math.prod(n // p for n, p in zip(task.encoders.latent_shape(media_shape)[1:], patch))

    tokens = {"latent": latent_tokens(task.media_shape())}
    if data.bucketing or data.frame_buckets:
        sizes = make_buckets(data.size, data.bucket_multiple, data.bucket_min_aspect, data.bucket_max_aspect) \
            if data.bucketing else [tuple(task.media_shape()[-2:])]
        lengths = data.frame_buckets or [data.frames]
        media = task.media_shape()
        shapes = [(media[0], n, *hw) if data.frame_buckets else (*media[:-2], *hw) for n in lengths for hw in sizes]
        tokens["latent (largest bucket)"] = max(latent_tokens(s) for s in shapes)
        kinds = ([f"{len(sizes)} aspect-ratio buckets of ~{data.size}^2 pixels"] if data.bucketing else []) + \
            ([f"{len(lengths)} duration buckets ({', '.join(map(str, sorted(lengths)))} frames)"]
             if data.frame_buckets else [])
        notes.append(f"{' x '.join(kinds)}; memory uses the largest bucket")
    tokens["text"] = task.encoders.seq_len
    return tokens, frozen, frozen_bytes


def _digits_tokens(task: Any) -> dict[str, int]:
    m = task.recipe.model
    return {"latent": (task.recipe.data.image_size // m.patch_size) ** 2, "text": m.max_text_length}


def _stacks(models: Mapping[str, nn.Module], trained: Sequence[str], tokens_per_item: int) -> list[BlockStack]:
    return [BlockStack(n, tokens_per_item, m.config.hidden_size, m.config.depth,
                       max(meta_parameters(b) for b in m.blocks))
            for n, m in models.items() if n in trained and isinstance(m, MMDiT)]  # digits, text_to_media


def _check_wrap_class(dist: Distribution, models: Mapping[str, nn.Module], source: str) -> None:
    if dist.wrap_class is None:
        return
    names = {type(sub).__name__ for m in models.values() for sub in m.modules()}
    wanted = [c.strip() for c in str(dist.wrap_class).split(",") if c.strip()]
    unknown = [c for c in wanted if c not in names]
    if unknown:
        raise ConfigError(f"{unknown} is no module class of the trained models (they have e.g. "
                          f"{sorted(n for n in names if n.endswith('Block'))})",
                          "fsdp_config.fsdp_transformer_layer_cls_to_wrap", source)


def dry_run(recipe_path: str, overrides: Sequence[str] = (), distribution: Distribution = Distribution(),
            assume: Mapping[str, str] | None = None, accelerate_config: str | None = None) -> DryRunReport:
    """Build the recipe's models on the meta device and estimate what one training step needs per GPU."""
    from mmflow.tasks import get_task_class

    assume = dict(assume or {})
    recipe, missing = _load(recipe_path, overrides)
    distribution = with_recipe_sharding(distribution, recipe.train)
    task = get_task_class(recipe.task)(recipe)
    notes = [f"{key} {path} is not here (a dry run reads no input)"
             for key, path, _, _ in input_paths(recipe) if not path.exists()]
    notes += [distribution.note] if distribution.note else []
    frozen: list[ModelLine] = []
    frozen_bytes, tokens = 0, {}
    if recipe.task == "text_to_media":
        tokens, frozen, frozen_bytes = _text_to_media_setup(task, missing, assume, notes)
    elif recipe.task == "digits_image":
        tokens = _digits_tokens(task)
    with torch.device("meta"):
        models = task.build_models()
    groups = task.optimizer_groups(models)
    trained = [n for names in groups.values() for n in names]
    ema = task.ema_models(models) if recipe.train.ema_decay is not None else []
    _check_wrap_class(distribution, {n: models[n] for n in trained}, accelerate_config or "--fsdp")
    if recipe.train.init_from is not None:
        _check_init_from(recipe.train.init_from, {n: models[n] for n in trained}, notes)
    count = {n: meta_parameters(m) for n, m in models.items()}
    lines = [ModelLine(n, count[n], ("trained (+EMA)" if n in ema else "trained") if n in trained else "frozen")
             for n in models]
    flow = getattr(recipe, "flow", None)
    if flow is not None and flow.objective == "meanflow" and flow.meanflow.teacher and "velocity" in count:
        # the teacher is the trained model's flow-matching self (its interval embedding aside), loaded float32
        frozen.append(ModelLine("meanflow teacher", count["velocity"], "frozen", f"float32, {flow.meanflow.teacher}"))
        frozen_bytes += 4 * count["velocity"]
    base_bytes = 0
    if recipe.train.lora is not None:
        count, lines, base_bytes = _lora_setup(recipe.train, models, trained, count, lines)
    mp = recipe.train.mixed_precision
    if mp == "auto":  # the estimate is for GPUs, where auto is bf16 from Ampere on (mmflow/train/precision.py)
        mp = "bf16"
        notes.append("train.mixed_precision auto: estimated as bf16 (a GPU with bf16 kernels)")
    if distribution.mixed_precision not in (None, mp):
        notes.append(f"the Accelerate config says mixed_precision {distribution.mixed_precision}, the recipe "
                     f"{mp}: the recipe's wins (make_accelerator passes it)")
    checkpointing = bool(getattr(recipe.model, "gradient_checkpointing", False))
    report = DryRunReport(recipe_path, recipe.task, distribution, lines + frozen, recipe.train.batch_size,
                          recipe.train.batch_size * distribution.processes * recipe.train.grad_accum, tokens,
                          MemoryEstimate(0, 0, 0, 0, 0, 0), mp, checkpointing, notes)
    stacks = _stacks(models, trained, report.tokens_per_item)
    if not stacks:
        notes.append("activations not estimated: the formula is for MM-DiT blocks")
    report.memory = estimate_memory(sum(count[n] for n in trained), sum(count[n] for n in ema), frozen_bytes, stacks,
                                    recipe.train.batch_size, mp, checkpointing, distribution.shards, base_bytes)
    return report


def _check_init_from(path: str, trained: Mapping[str, nn.Module], notes: list[str]) -> None:
    """train.init_from's models have the configs the recipe builds (config.json, or a published model the
    absent folder is named after): else the ConfigError the run would raise, now."""
    if Path(path).exists():
        for name, model in trained.items():
            check_init_config(model, init_model_folder(Path(path), name), name)
        notes.append(f"train.init_from {path}: its {', '.join(trained)} config matches the recipe's")
        return
    known = known_velocity(path)
    if known is None or len(trained) != 1:
        notes.append(f"train.init_from {path} is not here and names no known model: not checked against the recipe")
        return
    (name, model), (known_name, config) = next(iter(trained.items())), known
    check_same_config(model, "mmdit", to_dict(config), name, f"the published {known_name} ({path} is named after it)")
    notes.append(f"train.init_from {path} is not here: the recipe's {name} is the published {known_name}'s")


def _lora_setup(train: Any, models: Mapping[str, nn.Module], trained: Sequence[str], count: dict[str, int],
                lines: list[ModelLine]) -> tuple[dict[str, int], list[ModelLine], int]:
    """train.lora on the meta models, as the trainer does it: the trained model's parameters become its
    adapters (counts, lines); its frozen base, in train.frozen_dtype, is returned in bytes with its buffers."""
    if len(trained) != 1:
        raise ConfigError(f"LoRA adapts one trained model; this task trains {list(trained)}", "train.lora")
    name = trained[0]
    model = models[name]
    add_lora(model, train.lora)
    cast_frozen(model, train.frozen_dtype)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    adapter = sum(p.numel() for p in model.parameters() if p.requires_grad)
    base_bytes = sum(t.numel() * t.element_size() for t in [*frozen, *model.buffers()])
    at = next(i for i, line in enumerate(lines) if line.name == name)
    lora = train.lora
    lines = [*lines[:at], dataclasses.replace(lines[at], parameters=adapter,
                                              note=f"LoRA rank {lora.rank} on {', '.join(lora.targets)}"),
             ModelLine(f"{name} base", sum(p.numel() for p in frozen), "frozen",
                       f"{train.frozen_dtype}, from train.init_from"), *lines[at + 1:]]
    return {**count, name: adapter}, lines, base_bytes


def run_dry(args: Any) -> int:
    """The CLI's `train --dry-run`: print the report of `args` (recipe, overrides and the dry-run flags)."""
    assume = {}
    for text in args.assume or []:
        key, sep, value = text.partition("=")
        if not sep or not key or not value:
            raise ConfigError(f"--assume {text!r}: expected KEY=NAME (an encoder key or 'tokenizer')", "--assume")
        assume[key] = value
    dist = distribution_from_args(args.accelerate_config, args.num_gpus, args.fsdp)
    report = dry_run(args.recipe, list(args.overrides), dist, assume, args.accelerate_config)
    print("\n".join(report.lines()))
    return 0

