"""`train.sharding: fsdp2`: shard trained models over the processes with torch's `fully_shard` (FSDP2), from outside.

    train:
      sharding: fsdp2               # none (default): accelerate wraps trained models in DDP
      fsdp2:                        # optional; null = these defaults
        reshard_after_forward: true # free each block's gathered weights after its forward (ZeRO-3); false keeps
                                    #   them until its backward (ZeRO-2-like: more memory, one all-gather less)
        param_dtype: null           # bfloat16: blocks compute on bf16 copies of the gathered weights
        reduce_dtype: null          # float32: gradients are reduce-scattered in fp32 (null: as param_dtype)

Every parameter, gradient, AdamW state and EMA weight is a DTensor split along dim 0 over the processes
(1/N of the memory each). Each `MMDiTBlock` is one unit (its weights gathered just before its forward and its
gradients reduce-scattered right after its backward), then the root holds what is left (embedders, final
layer); a trained model without blocks (digits' text embedder) is one root unit. The models themselves hold
no distributed code: this module is the one place that knows about sharding (torchtitan's `parallelize`).

Checkpoints are whole, not DCP-sharded: the trainer gathers each model and EMA to rank 0 into the usual
`models/<name>` folders (loadable without torch.distributed) and the optimizer's whole state, by parameter name,
into `optimizer_full_<group>.pt`; on --resume every rank reads them (shared storage) and keeps its shard. That
costs one whole model in rank 0's CPU memory, like an export.

Written for CUDA (NCCL) and CPU (gloo); the test suite runs it on 2 gloo processes only (trains to DDP's
weights, resumes exactly, exports), so the NCCL path is unverified.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from mmflow.models.mmdit import MMDiTBlock
from mmflow.train.config import Fsdp2Config

__all__ = ["SHARD_UNITS", "clip_grad_norm", "full_state_dict", "full_optimizer_state", "has_units", "is_sharded",
           "load_full_optimizer_state", "load_full_state_dict", "no_sync", "parallelize", "shard_like"]

SHARD_UNITS: tuple[type[nn.Module], ...] = (MMDiTBlock,)  # each instance is its own FSDP unit
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered to rank 0, on the CPU; others get {}


def _policy(config: Fsdp2Config) -> MixedPrecisionPolicy:
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    return MixedPrecisionPolicy(param_dtype=dtypes.get(config.param_dtype or ""),
                                reduce_dtype=dtypes.get(config.reduce_dtype or ""))


def _mesh(mesh_or_world: DeviceMesh | int) -> DeviceMesh:
    if isinstance(mesh_or_world, DeviceMesh):
        return mesh_or_world
    if not dist.is_initialized():
        raise RuntimeError("parallelize: no process group (launch with accelerate launch / torchrun)")
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    return init_device_mesh(device, (mesh_or_world,))


def parallelize(model: nn.Module, mesh_or_world: DeviceMesh | int, config: Fsdp2Config) -> list[nn.Module]:
    """Shard `model` in place: fully_shard each SHARD_UNITS submodule, then the root. Returns the units
    (blocks in order, the root last). Parameters move to the mesh's device and become DTensors (Shard(0));
    build an optimizer (and an EMA: `shard_like`) only after this."""
    mesh = _mesh(mesh_or_world)
    policy = _policy(config)
    units = [m for m in model.modules() if isinstance(m, SHARD_UNITS)]
    for unit in units:
        fully_shard(unit, mesh=mesh, reshard_after_forward=config.reshard_after_forward, mp_policy=policy)
    # the root's weights are needed again at once for the backward: FSDP2 keeps the root gathered regardless
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return [*units, model]


def has_units(model: nn.Module) -> bool:
    """Whether `model` holds SHARD_UNITS submodules (what `parallelize` shards one by one)."""
    return any(isinstance(m, SHARD_UNITS) for m in model.modules())


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def no_sync(model: nn.Module) -> Iterator[None]:
    """Accumulate unreduced gradients locally for a micro-batch that is not the last (DDP's no_sync for FSDP2)."""
    assert isinstance(model, FSDPModule)
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def clip_grad_norm(parameters: Iterable[Tensor], max_norm: float) -> Tensor:
    """torch.nn.utils.clip_grad_norm_ for sharded (DTensor) gradients: the global norm over all shards,
    as a plain scalar tensor (DTensor and plain gradients may mix, e.g. a sharded and a replicated model)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    parts = []
    for group in ([g for g in grads if isinstance(g, DTensor)], [g for g in grads if not isinstance(g, DTensor)]):
        if group:
            norm = torch.nn.utils.get_total_norm(group, 2.0)
            parts.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)  # sum of squares over ranks
    total = torch.linalg.vector_norm(torch.stack(parts)) if parts else torch.zeros(())
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.to(g.device))
    return total


def shard_like(copy: nn.Module, model: nn.Module, names: Iterable[str]) -> None:
    """Make the parameters `names` of `copy` (an EMA shadow: a plain module of the same architecture) float32
    DTensors laid out like `model`'s (sharded by `parallelize`), holding `model`'s current values; its buffers
    move to their device. The EMA then updates shard by shard, with no communication."""
    own = dict(model.named_parameters())
    for name in names:
        owner, _, leaf = name.rpartition(".")
        module = copy.get_submodule(owner)
        setattr(module, leaf, nn.Parameter(own[name].detach().float().clone(), requires_grad=False))
    buffers = dict(model.named_buffers())
    for name, b in copy.named_buffers():
        b.data = b.data.to(buffers[name].device)


def full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The whole state dict on rank 0's CPU ({} on the others). A collective: every rank calls it.
    Works on a `parallelize`d model and on a plain module with DTensor parameters (an EMA shadow)."""
    if isinstance(model, FSDPModule):
        return get_model_state_dict(model, options=_FULL)
    rank0 = dist.get_rank() == 0
    out = {}
    for k, v in model.state_dict().items():
        whole = v.full_tensor() if isinstance(v, DTensor) else v  # every rank gathers, rank 0 keeps it
        if rank0:
            out[k] = whole.detach().cpu()
    return out


def load_full_state_dict(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load a whole state dict (every rank holds it: each reads the checkpoint from shared storage) into a
    `parallelize`d model or a shard_like'd copy, strictly."""
    if isinstance(model, FSDPModule):
        # a copy: set_model_state_dict replaces the dict's values by the distributed shards
        set_model_state_dict(model, dict(state), options=StateDictOptions(full_state_dict=True, strict=True))
        return
    own = model.state_dict()
    if set(own) != set(state):
        raise KeyError(f"state dict keys differ: missing {sorted(set(own) - set(state))[:4]}, "
                       f"unexpected {sorted(set(state) - set(own))[:4]}")
    with torch.no_grad():
        for k, v in own.items():
            whole = state[k].to(v.device, v.dtype)
            v.copy_(distribute_tensor(whole, v.device_mesh, v.placements) if isinstance(v, DTensor) else whole)


def full_optimizer_state(models: dict[str, nn.Module], optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's whole state keyed by parameter name ("velocity.blocks.0...."), on rank 0's CPU. A collective."""
    return get_optimizer_state_dict(nn.ModuleDict(models), optimizer, options=_FULL)


def load_full_optimizer_state(models: dict[str, nn.Module], optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load what full_optimizer_state returned (every rank holds it) into the sharded optimizer."""
    # not strict: a parameter that never had a gradient (a learned null text no batch dropped to yet) has no
    # AdamW state, in the saved optimizer as in the live one
    set_optimizer_state_dict(nn.ModuleDict(models), optimizer, state,
                             options=StateDictOptions(full_state_dict=True, strict=False))
