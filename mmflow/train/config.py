"""Training hyper-parameters shared by every task (the `train:` section of a recipe)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mmflow.config import ConfigError, check
from mmflow.models.lora import LoraConfig

# the launch train.sharding fsdp2 takes on one machine (a plain MULTI_GPU config); named in refusals
MULTI_GPU_CONFIG = "recipes/accelerate/multi_gpu_8gpu.yaml"

#: train.mixed_precision's values (mmflow/train/precision.py resolves them against the device)
MixedPrecision = Literal["no", "fp16", "bf16", "auto"]


@dataclass
class Fsdp2Config:
    """train.fsdp2: how `train.sharding: fsdp2` shards (mmflow/train/parallelize.py). The defaults: FULL_SHARD
    (ZeRO-3) computing in float32, so the result equals DDP's to float rounding."""

    reshard_after_forward: bool = field(default=True, metadata={
        "help": "free a block's gathered weights after its forward and gather them again for its backward (least "
                "memory); false keeps them until the backward (one all-gather less per block)"})
    param_dtype: Literal["float32", "bfloat16"] | None = field(default=None, metadata={
        "help": "dtype the gathered weights compute in (FSDP2 MixedPrecisionPolicy); the stored shards, gradients "
                "and AdamW states stay float32; null = as stored (train.mixed_precision's autocast still applies)"})
    reduce_dtype: Literal["float32", "bfloat16"] | None = field(default=None, metadata={
        "help": "dtype gradients are averaged in across processes; null = param_dtype's"})

    def validate(self) -> None:
        check(not (self.reduce_dtype == "bfloat16" and self.param_dtype != "bfloat16"), "reduce_dtype",
              "bfloat16 reduction of float32 gradients only loses precision: set param_dtype: bfloat16 too, "
              "or reduce in float32")


@dataclass
class TrainConfig:
    batch_size: int = field(default=256, metadata={"min": 1, "help": "per process; global = batch_size * processes * grad_accum"})
    grad_accum: int = field(default=1, metadata={"min": 1, "help": "micro-batches per optimizer step"})
    max_steps: int = field(default=1000, metadata={"min": 1, "help": "optimizer steps"})
    lr: float = field(default=1e-3, metadata={"min": 0.0, "min_exclusive": True})
    min_lr_ratio: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0, "help": "cosine decays to lr * this"})
    warmup_steps: int = field(default=0, metadata={"min": 0})
    weight_decay: float = field(default=0.0, metadata={"min": 0.0})
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = field(default=1e-8, metadata={"min": 0.0, "min_exclusive": True})
    grad_clip: float | None = field(default=1.0, metadata={"help": "max global grad norm; null = off"})
    mixed_precision: MixedPrecision = field(default="no", metadata={
        "help": "autocast precision; auto = bf16 where the device has bf16 kernels (a CUDA GPU, an AVX512 or Arm "
                "BF16 CPU), else float32 (mmflow/train/precision.py)"})
    init_from: str | None = field(default=None, metadata={
        "exists": "dir", "help": "start the trained models from this run, checkpoint or exported model (EMA weights "
                                 "where saved); a fresh start only (--resume continues the run's own checkpoint)"})
    lora: LoraConfig | None = field(default=None, metadata={
        "help": "train LoRA adapters on the init_from model instead of its weights (mmflow/train/lora_training.py); "
                "null = full training"})
    frozen_dtype: Literal["float32", "bfloat16"] = field(default="float32", metadata={
        "help": "dtype the frozen weights of a LoRA run's model (its base) are stored in: bfloat16 halves them "
                "(needs mixed_precision bf16); the adapters, their gradients and AdamW states stay float32"})
    ema_decay: float | None = field(default=0.999, metadata={"help": "null = no EMA"})
    ema_warmup: bool = field(default=True, metadata={"help": "decay ramps as (1+n)/(10+n) early on"})
    num_workers: int = field(default=0, metadata={"min": 0, "help": "DataLoader worker processes per rank"})
    log_every: int = field(default=50, metadata={"min": 1})
    checkpoint_every: int = field(default=500, metadata={"min": 1})
    keep_checkpoints: int = field(default=2, metadata={"min": 1, "help": "newest good checkpoints kept"})
    validate_every: int = field(default=0, metadata={"min": 0, "help": "0 = only at the end"})
    trackers: list[Literal["tensorboard"]] = field(default_factory=lambda: ["tensorboard"])
    device: Literal["auto", "cpu", "cuda"] = "auto"
    sharding: Literal["none", "fsdp2"] = field(default="none", metadata={
        "help": "how several processes hold the trained models: none = each a whole copy (DDP); fsdp2 = split "
                "over the processes by torch's fully_shard, one unit per MM-DiT block (mmflow/train/parallelize.py); "
                "one process ignores it"})
    fsdp2: Fsdp2Config | None = field(default=None, metadata={"help": "sharding fsdp2's options; null = defaults"})
    compile: bool | Literal["auto"] = field(default="auto", metadata={
        "help": "torch.compile the velocity model's forward (mmflow/models/compile.py): auto = on for an MM-DiT on "
                "CUDA, off on CPU (its compile outlasts short CPU runs) and under sharding fsdp2"})

    def validate(self) -> None:
        check(self.warmup_steps <= self.max_steps, "warmup_steps", f"{self.warmup_steps} exceeds max_steps {self.max_steps}")
        check(all(0.0 <= b < 1.0 for b in self.betas), "betas", f"each beta must lie in [0, 1), got {list(self.betas)}")
        check(self.grad_clip is None or self.grad_clip > 0, "grad_clip", f"must be > 0 or null, got {self.grad_clip}")
        check(self.lora is None or self.init_from is not None, "init_from",
              "train.lora trains adapters on a trained model: set init_from to it (the base the adapters point to)")
        check(self.frozen_dtype == "float32" or (self.lora is not None and self.mixed_precision == "bf16"),
              "frozen_dtype", f"{self.frozen_dtype} is for a LoRA run's frozen base (train.lora) under "
                              f"mixed_precision bf16 (autocast computes in bf16 from it); this run has "
                              f"{'no lora' if self.lora is None else f'mixed_precision {self.mixed_precision}'}")
        check(self.fsdp2 is None or self.sharding == "fsdp2", "fsdp2",
              "these options are for train.sharding: fsdp2 (this run has sharding none)")
        check(self.sharding == "none" or self.lora is None, "sharding",
              "fsdp2 with train.lora is not supported (LoRA checkpoints are adapter-only accelerate states); "
              "a LoRA run's base is frozen: train it with sharding none")
        check(self.sharding == "none" or self.mixed_precision != "fp16", "sharding",
              "fsdp2 with mixed_precision fp16 is not supported (its loss scaler does not handle sharded "
              "gradients): use bf16")
        check(not (self.compile is True and self.sharding == "fsdp2"), "compile",
              "compile with sharding fsdp2 is untested: set compile false, or auto (which leaves it off under fsdp2)")
        check(self.ema_decay is None or 0.0 < self.ema_decay < 1.0, "ema_decay", f"must lie in (0, 1) or be null, got {self.ema_decay}")


def check_fsdp_plugin(train: TrainConfig, processes: int, source: str | None = None) -> None:
    """Refuse, before any work, a `train` section that accelerate's FSDP plugin (an accelerate config with
    distributed_type FSDP, fsdp_version 1 or 2, read from `source` where known) cannot train over `processes`
    processes. The trainer and the dry run both call it, so `--dry-run --accelerate-config` refuses what a launch
    would."""
    where = f"distributed_type: FSDP in {source or 'the accelerate config'}"
    if train.sharding == "fsdp2" and processes > 1:
        raise ConfigError(f"fsdp2: the trainer shards the models itself; accelerate's FSDP plugin ({where}) would "
                          f"shard them twice: launch with a MULTI_GPU accelerate config (e.g. {MULTI_GPU_CONFIG}, "
                          "or accelerate launch --multi_gpu)", "train.sharding")
    if train.ema_decay is not None:
        # the plugin wraps the model in accelerator.prepare; the EMA's deepcopy of it then fails (TypeError under
        # fsdp_version 1, AssertionError under 2): found on an H200, torch 2.11, accelerate 1.15
        raise ConfigError(f"{train.ema_decay} (an EMA) cannot train under accelerate's FSDP plugin ({where}): the "
                          "plugin shards the model inside accelerator.prepare, where the EMA cannot copy it "
                          "(copy.deepcopy fails, seen on an H200). Launch with a MULTI_GPU accelerate config "
                          f"(e.g. {MULTI_GPU_CONFIG}) and train.sharding: fsdp2, which shards the model and its EMA "
                          "alike, or set train.ema_decay: null", "train.ema_decay")
