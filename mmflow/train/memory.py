"""A rough per-GPU memory estimate for training: weights + gradients + optimizer + EMA + frozen + activations.

What the trainer holds (mmflow/train/trainer.py), per trained parameter, in bytes:
  weights 4     fp32 master weights: Accelerate's mixed precision is autocast, parameters stay fp32
  grads 4       fp32, like the parameters
  optimizer 8   AdamW's exp_avg and exp_avg_sq in fp32
  EMA 4         a float32 shadow of each EMA'd model (mmflow/train/ema.py)
DDP keeps all of it on every GPU; FSDP FULL_SHARD divides it by the number of GPUs and adds the
gathered units in flight: 2 wrap units (the one computing and the one prefetched) of the largest
block, in the compute dtype (bf16 / fp16: 2 bytes, else 4). The EMA is counted as sharded under FSDP
(it copies the wrapped model's local shards). Frozen models (text encoders, tokenizer) are never
wrapped: every GPU holds them whole, in their own dtype. A LoRA run (train.lora) trains its adapters only:
the four terms above count the adapters, and the frozen base it adapts is held in train.frozen_dtype
(float32: 4 bytes, bfloat16: 2), plus its buffers (SD3's position table) as stored.

Activations of an MM-DiT, per GPU (Korthikanti et al. 2022, "Reducing activation recomputation",
a transformer layer with fused/flash attention, i.e. no S^2 term):
  A = b x T x H x L x 34 bytes                     with 16-bit activations (bf16 / fp16 autocast)
      (x 2 without mixed precision)
b the micro-batch per GPU, T the tokens per item (latent patches + text), H the width, L the blocks.
34 bytes per token-channel-layer is their count for MLP ratio 4 (QKV inputs, scores-free attention,
the MLP's 4H hidden, norms, dropout-free); MM-DiT's two streams and adaLN modulation stay near it.
With gradient checkpointing (one checkpoint per block, as MMDiT does) only each block's inputs stay,
in fp32 (the residual stream), and one block is recomputed at a time:
  A_ckpt = b x T x H x (4 L + 34)
The numbers are estimates to choose a distribution and a batch, good to a factor ~1.5; allocator
fragmentation and CUDA context (~1 GiB) come on top.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ACTIVATION_BYTES", "BlockStack", "MemoryEstimate", "estimate_memory"]

ACTIVATION_BYTES = 34  # bytes per token x channel x layer with 16-bit activations (Korthikanti et al.)
RESIDUAL_BYTES = 4  # a checkpointed block's stored input: the fp32 residual stream
GIB = 1024**3


@dataclass(frozen=True)
class BlockStack:
    """A transformer's shape for the activation term: `tokens` per item, `width` H, `depth` L blocks."""

    name: str
    tokens: int
    width: int
    depth: int
    block_parameters: int  # the largest block's, for FSDP's gathered units


@dataclass
class MemoryEstimate:
    """Bytes per GPU by part; `total` is their sum."""

    weights: float
    grads: float
    optimizer: float
    ema: float
    frozen: float
    activations: float
    base: float = 0.0  # a LoRA run's frozen base: weights inside the trained model that get no gradient

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.ema + self.frozen + self.activations + self.base

    def lines(self) -> list[str]:
        parts = [("weights (fp32 master)", self.weights), ("gradients (fp32)", self.grads),
                 ("AdamW states (fp32 x2)", self.optimizer), ("EMA (fp32)", self.ema),
                 *([("LoRA base (frozen)", self.base)] if self.base else []),
                 ("frozen models", self.frozen), ("activations (estimate)", self.activations)]
        unit, size = ("GiB", GIB) if self.total >= GIB else ("MiB", 1024**2)
        return [f"  {name:<24} {value / size:9.2f} {unit}" for name, value in parts + [("total per GPU", self.total)]]


def estimate_memory(trained: int, ema: int, frozen_bytes: int, stacks: list[BlockStack], micro_batch: int,
                    mixed_precision: str, gradient_checkpointing: bool, shards: int,
                    base_bytes: float = 0.0) -> MemoryEstimate:
    """Per-GPU bytes for `trained` trained parameters (of which `ema` have an EMA copy), `frozen_bytes` of
    frozen weights, activations of `stacks` at `micro_batch` items per GPU; `shards` > 1: FSDP FULL_SHARD
    over that many GPUs (1: DDP or one GPU). `base_bytes`: a LoRA base's frozen weights and buffers, inside
    the wrapped model (sharded like it); its trained parameters are the adapters only, so gradients, AdamW
    states and EMA are theirs. See the module docstring for every factor."""
    half = mixed_precision in ("bf16", "fp16")
    gathered = 0.0
    if shards > 1 and stacks:
        gathered = 2 * max(s.block_parameters for s in stacks) * (2 if half else 4)
    activations = 0.0
    for s in stacks:
        per_layer = ACTIVATION_BYTES * (1 if half else 2)
        if gradient_checkpointing:
            activations += micro_batch * s.tokens * s.width * (RESIDUAL_BYTES * s.depth + per_layer)
        else:
            activations += micro_batch * s.tokens * s.width * s.depth * per_layer
    return MemoryEstimate(weights=4 * trained / shards + gathered, grads=4 * trained / shards,
                          optimizer=8 * trained / shards, ema=4 * ema / shards, frozen=float(frozen_bytes),
                          activations=activations, base=base_bytes / shards)
