"""LoRA adapters on the MM-DiT: target selection, save/load (peft's format), scales, composition, merging."""

from __future__ import annotations

import json

import pytest
import torch

from mmflow.config import ConfigError
from mmflow.models.lora import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterMismatch, LoraConfig, add_lora, load_adapter,
                                merged_copy, resolve_targets, save_adapter)
from mmflow.models.mmdit import MMDiT, mmdit_config


ULP_ATOL = 1e-6  # "unchanged" up to float32 rounding in a differently blocked matmul (outputs are O(1))


def _model(seed: int = 0, **overrides) -> MMDiT:
    torch.manual_seed(seed)
    model = MMDiT(mmdit_config("test", in_channels=4, context_dim=8, pooled_dim=8, **overrides))
    with torch.no_grad():  # a trained-looking base: the zero-initialised modulations would hide the adapters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _inputs(b: int = 2) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 4, 8, 8, generator=g)
    t = torch.rand(b, generator=g)
    cond = {"text": torch.randn(b, 3, 8, generator=g), "pooled": torch.randn(b, 8, generator=g)}
    return x, t, cond


def _out(model: torch.nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(*_inputs())


def _adapted(settings: LoraConfig, seed: int = 0, adapter_seed: int = 5) -> MMDiT:
    """The base `_model(seed)` with a trained-looking adapter (B made non-zero)."""
    model = _model(seed)
    add_lora(model, settings)
    g = torch.Generator().manual_seed(adapter_seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model


def test_groups_select_both_streams_and_unknown_targets_are_refused_by_name():
    model = _model()
    attention = resolve_targets(model, ["attention"])
    assert attention == ["blocks.0.x_qkv", "blocks.0.x_proj", "blocks.0.c_qkv", "blocks.0.c_proj",
                         "blocks.1.x_qkv", "blocks.1.x_proj", "blocks.1.c_kv"]
    assert resolve_targets(model, ["modulation"])[-1] == "final_layer.modulation"
    assert resolve_targets(model, ["mlp", "blocks.1.x_qkv"]) == [
        "blocks.0.x_mlp.fc1", "blocks.0.x_mlp.fc2", "blocks.0.c_mlp.fc1", "blocks.0.c_mlp.fc2",
        "blocks.1.x_qkv", "blocks.1.x_mlp.fc1", "blocks.1.x_mlp.fc2"]
    refined = _model(text_refiner=1)
    assert [m for m in resolve_targets(refined, ["attention", "mlp"]) if m.startswith("text_refiner")] == [
        "text_refiner.0.x_qkv", "text_refiner.0.x_proj", "text_refiner.0.x_mlp.fc1", "text_refiner.0.x_mlp.fc2"]
    with pytest.raises(ConfigError, match="'blocks.*.q_proj' matches no linear layer") as e:
        resolve_targets(model, ["attention", "blocks.*.q_proj"])
    assert e.value.key == "train.lora.targets"


def test_a_fresh_adapter_changes_nothing_and_is_all_that_trains():
    model = _model()
    before = _out(model)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    add_lora(model, LoraConfig(rank=2, targets=["attention", "mlp", "modulation"]))
    # B = 0 adds exact zeros, but the wrapped layer's matmul may block differently (1 float32 ulp, 1.2e-7, seen
    # on an AVX2 CPU; bit-equal on AVX512): equal to rounding, while a trained adapter moves outputs by >1e-4
    torch.testing.assert_close(_out(model), before, rtol=0, atol=ULP_ATOL)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A.default." in n or ".lora_B.default." in n for n in trainable)
    wrapped = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if ".lora_" not in k}
    assert wrapped.keys() == base.keys()


def test_an_adapted_mlp_is_used_with_gradients_on():
    """The MLP's fused GELU path reads fc2's weight directly; with fc2 wrapped it must call the adapter."""
    model = _adapted(LoraConfig(rank=2, targets=["blocks.*.x_mlp.fc2"]))
    model.eval()
    with torch.enable_grad():
        grad_on = model(*_inputs())
    torch.testing.assert_close(grad_on.detach(), _out(model))
    assert not torch.allclose(_out(model), _out(_model()))


def test_a_saved_adapter_reloads_to_the_same_outputs_also_through_peft(tmp_path):
    settings = LoraConfig(rank=3, alpha=6.0, targets=["attention", "mlp"])
    model = _adapted(settings)
    folder = save_adapter(model, tmp_path / "adapter", settings, base="/models/base")
    assert sorted(p.name for p in folder.iterdir()) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    assert (config["r"], config["lora_alpha"], config["base_model_name_or_path"]) == (3, 6.0, "/models/base")

    fresh = _model()
    modules = load_adapter(fresh, folder, "adapter0")
    assert modules == sorted(resolve_targets(_model(), settings.targets))
    torch.testing.assert_close(_out(fresh), _out(model))

    from peft import PeftModel

    via_peft = PeftModel.from_pretrained(_model(), str(folder))
    torch.testing.assert_close(_out(via_peft), _out(model))


def test_merge_equals_the_adapter_and_scale_zero_is_the_base(tmp_path):
    settings = LoraConfig(rank=2, targets=["attention", "modulation"])
    folder = save_adapter(_adapted(settings), tmp_path / "a", settings, base="base")
    base_out = _out(_model())
    for scale in (1.0, 0.5, 0.0):
        model = _model()
        load_adapter(model, folder, "adapter0", scale=scale)
        merged = merged_copy(model)
        assert type(merged) is MMDiT and not any(".lora_" in k for k in merged.state_dict())
        torch.testing.assert_close(_out(merged), _out(model), rtol=1e-5, atol=1e-6)
        if scale == 0.0:
            torch.testing.assert_close(_out(model), base_out, rtol=0, atol=ULP_ATOL)
        else:
            assert not torch.allclose(_out(model), base_out, atol=1e-4)


def test_two_adapters_compose_their_weight_updates_add(tmp_path):
    a = LoraConfig(rank=2, targets=["attention"])
    b = LoraConfig(rank=4, alpha=2.0, targets=["blocks.0.x_qkv", "mlp"])
    fa = save_adapter(_adapted(a, adapter_seed=1), tmp_path / "a", a, base="base")
    fb = save_adapter(_adapted(b, adapter_seed=2), tmp_path / "b", b, base="base")
    base = _model().state_dict()

    def delta(*loads: tuple) -> dict[str, torch.Tensor]:
        model = _model()
        for i, (folder, scale) in enumerate(loads):
            load_adapter(model, folder, f"adapter{i}", scale)
        return {k: v - base[k] for k, v in merged_copy(model).state_dict().items()}, model

    da, _ = delta((fa, 1.0))
    db, _ = delta((fb, 0.5))
    both, model = delta((fa, 1.0), (fb, 0.5))
    for k in base:
        torch.testing.assert_close(both[k], da[k] + db[k], rtol=1e-5, atol=1e-6)
    assert da["blocks.0.x_qkv.weight"].abs().max() > 0 and db["blocks.0.x_qkv.weight"].abs().max() > 0
    torch.testing.assert_close(_out(model), _out(merged_copy(model)), rtol=1e-5, atol=1e-6)


def test_an_adapter_for_another_base_model_is_refused_naming_what_differs(tmp_path):
    settings = LoraConfig(rank=2, targets=["attention"])
    folder = save_adapter(_adapted(settings), tmp_path / "a", settings, base="base")
    with pytest.raises(AdapterMismatch, match=r"shapes do not fit: \['blocks.0.c_proj.lora_A.weight: \(2, 32\)"):
        load_adapter(_model(hidden_size=64, num_heads=4), folder, "adapter0")
    deeper = LoraConfig(rank=2, targets=["blocks.2.x_qkv"])
    other = _model(depth=3)
    add_lora(other, deeper)
    folder3 = save_adapter(other, tmp_path / "deep", deeper, base="base")
    with pytest.raises(AdapterMismatch, match=r"not linear layers of this MMDiT: \['blocks.2.x_qkv'\]"):
        load_adapter(_model(), folder3, "adapter0")
    with pytest.raises(Exception, match="no adapter_config.json"):
        load_adapter(_model(), tmp_path, "adapter0")
