"""mmflow/models/compile.py: a compiled MM-DiT equals the eager one (inductor), keeps its state_dict keys, compiles
once for fixed shapes and a bounded number of times over buckets (aot_eager: the count, not the kernels), and
works with gradient checkpointing and LoRA adapters; the compile decision and its refusals."""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from mmflow.config import ConfigError
from mmflow.models.compile import compile_decision, compile_module, is_compiled
from mmflow.models.lora import LoraConfig, add_lora
from mmflow.models.mmdit import MMDiT, mmdit_config
from mmflow.models.toy_mlp import MLPVelocity, MLPVelocityConfig


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()
    counters.clear()


def _model(seed: int = 0) -> MMDiT:
    torch.manual_seed(seed)
    model = MMDiT(mmdit_config("test", in_channels=4, patch_size=[2, 2], context_dim=16, pooled_dim=8))
    with torch.no_grad():  # the zero-initialised gates and final layer would hide differences
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _inputs(b: int = 2, h: int = 8, w: int = 8, s: int = 6, seed: int = 1) -> tuple:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 4, h, w, generator=g), torch.rand(b, generator=g),
            {"text": torch.randn(b, s, 16, generator=g), "pooled": torch.randn(b, 8, generator=g)})


def _step(model: MMDiT, inputs: tuple) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Output and gradients of one forward + backward (gradients cleared first)."""
    model.zero_grad(set_to_none=True)
    out = model(*inputs)
    out.square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_inductor_compiled_mmdit_equals_eager_and_keeps_its_state_dict_keys():
    eager, compiled = _model(), compile_module(_model(), backend="inductor")
    assert is_compiled(compiled) and not is_compiled(eager)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # no `_orig_mod.` prefix
    inputs = _inputs()
    out_e, grads_e = _step(eager, inputs)
    out_c, grads_c = _step(compiled, inputs)
    # inductor fuses and reorders float32 reductions: rounding-level differences only
    torch.testing.assert_close(out_c, out_e, atol=1e-5, rtol=1e-4)
    assert grads_c.keys() == grads_e.keys()
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], atol=1e-5, rtol=1e-4, msg=name)
    assert copy.deepcopy(compiled).state_dict().keys() == eager.state_dict().keys()  # an EMA copy alike


def test_fixed_shapes_compile_once_and_buckets_a_bounded_number_of_times():
    model = compile_module(_model(), backend="aot_eager")
    for seed in range(3):  # the steps of a fixed-shape recipe
        _step(model, _inputs(seed=seed))
    assert _graphs() == 1
    buckets = [(8, 12), (12, 8), (16, 16), (4, 16), (8, 8)]
    for h, w in buckets:  # aspect-ratio buckets: H and W each become symbolic once
        _step(model, _inputs(h=h, w=w))
    after_buckets = _graphs()
    assert after_buckets <= 3, after_buckets
    for h, w in [*buckets, (20, 8)]:  # every bucket again, and a new one: no more graphs
        _step(model, _inputs(h=h, w=w))
    assert _graphs() == after_buckets
    assert counters["graph_break"] == {}  # the whole forward is one graph


def test_video_frame_buckets_recompile_once_with_masks_and_dropout():
    torch.manual_seed(0)
    model = compile_module(MMDiT(mmdit_config("test", in_channels=4, patch_size=[1, 2, 2], context_dim=16,
                                              pooled_dim=8)), backend="aot_eager")
    for frames in (3, 5, 3, 7, 2):  # clips of a frame bucket each, with their frame counts and a padded-text mask
        x = torch.randn(2, 4, frames, 8, 8)
        cond = {"text": torch.randn(2, 5, 16), "pooled": torch.randn(2, 8), "frames": torch.full((2,), frames),
                "text_mask": torch.tensor([[True] * 5, [True] * 3 + [False] * 2])}
        model(x, torch.rand(2), cond, drop=torch.tensor([True, False])).square().mean().backward()
    assert _graphs() == 2 and counters["graph_break"] == {}  # the first length static, then T symbolic


@pytest.mark.parametrize("variant", ["gradient_checkpointing", "lora"])
def test_compiled_mmdit_with_gradient_checkpointing_or_lora_equals_eager(variant):
    eager = _model()
    if variant == "lora":
        add_lora(eager, LoraConfig(rank=2, alpha=2.0, targets=["attention"]))
        with torch.no_grad():  # LoRA's B starts at zero: make the adapters count
            for n, p in eager.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
    else:
        eager.set_gradient_checkpointing(True)
    compiled = compile_module(copy.deepcopy(eager), backend="aot_eager")
    inputs = _inputs()
    out_e, grads_e = _step(eager, inputs)
    out_c, grads_c = _step(compiled, inputs)
    torch.testing.assert_close(out_c, out_e, atol=1e-6, rtol=1e-5)
    assert grads_c.keys() == grads_e.keys() and grads_e
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], atol=1e-6, rtol=1e-5, msg=name)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    assert _graphs() == 1 and counters["graph_break"] == {}


def test_compile_decision_auto_true_false_and_blockers():
    mmdit, mlp = _model(), MLPVelocity(MLPVelocityConfig())
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    key = "train.compile"
    assert compile_decision("auto", cuda, mmdit, key)[0] is True
    on, why = compile_decision("auto", cpu, mmdit, key)
    assert not on and "off on cpu" in why
    assert compile_decision("auto", cuda, mlp, key)[0] is False  # pays for MM-DiTs only
    assert compile_decision(True, cpu, mlp, key)[0] is True  # asked for: compiled anyway
    assert compile_decision(False, cuda, mmdit, key)[0] is False
    blocked = "MeanFlow's JVP"
    on, why = compile_decision("auto", cuda, mmdit, key, blocker=blocked)
    assert not on and blocked in why
    with pytest.raises(ConfigError, match="train.compile") as e:
        compile_decision(True, cuda, mmdit, key, blocker=blocked)
    assert blocked in str(e.value)
    with pytest.raises(ConfigError, match="not one of"):
        compile_decision("yes", cpu, mmdit, key)
