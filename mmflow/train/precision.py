"""The precision a run computes in: `train.mixed_precision` resolved against the device it runs on.

bf16 autocast pays only where the device has bf16 arithmetic. A CUDA GPU from Ampere on has it; an x86 CPU has
it with AVX512-BF16 (Cooper Lake, Zen 4) or AMX (Sapphire Rapids on), an Arm CPU with its BF16 extension.
Elsewhere every bf16 matmul is converted to float32 and back: shapes_t2v's training step took 38 s under bf16
against 6.2 s in float32 on a 2-core AVX2 EPYC, and 5.2 s against 2.1 s on an AVX512 Xeon without BF16/AMX
(oneDNN calls bf16 "supported" there, from AVX512-BW, yet emulates it); on an AMX Xeon it took 1.6 s against
2.1 s. `auto` is what the CPU recipes ask for: bf16 where it is native, float32 where it is not.
"""

from __future__ import annotations

import logging
import platform
import typing

import torch

from mmflow.config import ConfigError
from mmflow.train.config import MixedPrecision

logger = logging.getLogger(__name__)

#: the values `train.mixed_precision` takes (recipes are validated against the same Literal)
CHOICES: tuple[str, ...] = typing.get_args(MixedPrecision)


def native_bf16(cpu: bool) -> bool:
    """Whether this machine's device (`cpu` or the current CUDA device) has bf16 kernels."""
    if not cpu:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        # not oneDNN's own test, which says yes from AVX512-BW on: without BF16 dot products it emulates them
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    # Arm and others: oneDNN's test is the BF16 extension there (torch's bf16 matmul goes through oneDNN)
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


def resolve_mixed_precision(asked: str, cpu: bool) -> str:
    """Accelerate's mixed_precision ('no', 'fp16' or 'bf16') for the recipe's `asked` on this device.

    'auto' becomes 'bf16' where it is native, else 'no' (logged). An explicit 'bf16' is kept, with a warning
    where it is emulated; 'fp16' on CPU is refused (no CPU autocast for it).
    """
    if asked not in CHOICES:
        raise ConfigError(f"train.mixed_precision: {asked!r} is not one of {', '.join(map(repr, CHOICES))}")
    if cpu and asked == "fp16":
        raise ConfigError("train.mixed_precision: 'fp16' needs a CUDA device; on CPU use 'bf16', 'auto' or 'no'")
    if asked not in ("bf16", "auto"):
        return asked
    where = "this CPU" if cpu else "this GPU"
    if native_bf16(cpu):
        if asked == "auto":
            logger.info("train.mixed_precision auto: bf16 autocast (%s has bf16 kernels)", where)
        return "bf16"
    if asked == "auto":
        logger.info("train.mixed_precision auto: float32 (%s has no bf16 kernels: bf16 would be emulated, "
                    "several times slower)", where)
        return "no"
    logger.warning("train.mixed_precision bf16: %s has no bf16 kernels (no AVX512-BF16, AMX or Arm BF16), so autocast "
                   "emulates bf16 and steps run several times slower than float32; 'auto' or 'no' picks float32",
                   where)
    return "bf16"
