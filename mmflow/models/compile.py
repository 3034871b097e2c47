"""torch.compile for the velocity model (`train.compile`, `FlowPipeline.from_pretrained(compile=...)`,
`mmflow sample --compile`), applied from outside the model, in place.

    train:
      compile: auto   # true | false | auto: on for an MM-DiT on CUDA, off on CPU and for other models

How: `module.compile(dynamic=None)` (nn.Module.compile). The module's calls run the compiled graph while the
module object, its parameters and its state_dict keys stay the eager ones (no `_orig_mod.` prefix, unlike
`torch.compile(module)`), so checkpoints, exports, EMA copies, DDP and LoRA adapters see the same module.
Compilation is lazy: the first call compiles (tens of seconds to minutes for an MM-DiT on a CPU).

Shapes: dynamic=None compiles the first shapes static (the fastest kernels); a dimension later seen changing
(an aspect-ratio or frame bucket, the text length, a smaller last batch) is recompiled once as symbolic, and
from then on any value of it reuses that graph. So a fixed-shape recipe compiles once and a bucketed one at
most once more per dimension that varies (image buckets: 3 graphs in all, video frame buckets 2; counted in
tests/models/test_compile.py), never once per bucket. Marking the bucket dimensions dynamic up front
(dynamic=True) saves nothing here: duck sizing ties H and W while they are equal, so it recompiles alike.

Why "auto" is off on CPU: on one CPU thread the compiled MM-DiT training step is only 1.03x (size S) to 1.26x
(size tiny) faster than eager (benchmarks/mmdit_step.py: matrix products and attention, which compile does not
change, are ~77% of an S step), while inductor's C++ build of the model takes tens of seconds to minutes; and
the tests need eager. On CUDA the elementwise work between bf16 matmuls weighs more, which compile fuses;
benchmarks/gpu.sh measures it there (B and L sizes vs diffusers).
"""

from __future__ import annotations

from typing import Literal, Union

import torch
from torch import nn

from mmflow.config import ConfigError
from mmflow.models.mmdit import MMDiT

CompileSetting = Union[bool, Literal["auto"]]
BACKEND = "inductor"  # tests set "aot_eager" where the recompilation count, not the kernels, is tested


def holds_mmdit(model: nn.Module) -> bool:
    """Whether `model` is or wraps an MM-DiT (LoRA adapters are injected in place; DDP wraps it as .module)."""
    return any(isinstance(m, MMDiT) for m in model.modules())


def compile_decision(setting: CompileSetting, device: torch.device, model: nn.Module, key: str,
                     blocker: str | None = None) -> tuple[bool, str]:
    """(compile or not, why, for the log line) for `setting` of config key `key` and `model` on `device`.

    blocker: why compiling cannot apply to this run (e.g. fsdp2 sharding): a plain `true` is then refused with
    a ConfigError naming `key`; "auto" stays off and says why.
    """
    if setting not in (True, False, "auto"):
        raise ConfigError(f"{setting!r} is not one of true, false, 'auto'", key)
    if setting is False:
        return False, f"{key}: false"
    if blocker is not None:
        if setting is True:
            raise ConfigError(f"compile: {blocker}; set {key}: false (or auto, which leaves it off here)", key)
        return False, f"{key}: auto, off because {blocker}"
    if setting is True:
        return True, f"{key}: true"
    if device.type != "cuda":
        return False, (f"{key}: auto, off on {device.type} (the compile takes longer than short CPU runs gain; "
                       f"set true to compile anyway)")
    if not holds_mmdit(model):
        return False, f"{key}: auto, off for a {type(model).__name__} (on for MM-DiTs, where it pays)"
    return True, f"{key}: auto, on for an MM-DiT on CUDA"


def compile_module(module: nn.Module, backend: str | None = None) -> nn.Module:
    """Compile `module`'s calls in place (state_dict keys unchanged; see the module docstring); returns it."""
    module.compile(backend=backend or BACKEND, dynamic=None)
    return module


def is_compiled(module: nn.Module) -> bool:
    """Whether `compile_module` (nn.Module.compile) was applied to `module`."""
    return getattr(module, "_compiled_call_impl", None) is not None
