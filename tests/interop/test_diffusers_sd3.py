"""Tests for mmflow/interop/diffusers_sd3.py: SD3 / SD3.5 transformer weights -> MMDiT, exactly."""

from __future__ import annotations

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from mmflow.cli import main  # noqa: E402
from mmflow.interop import convert_sd3_state_dict, load_diffusers_sd3, mmdit_config_from_sd3  # noqa: E402
from mmflow.model_io import load_model  # noqa: E402
from mmflow.models import MMDiT  # noqa: E402

BASE = dict(sample_size=16, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=4,
            joint_attention_dim=24, caption_projection_dim=32, pooled_projection_dim=12, out_channels=4,
            pos_embed_max_size=16)
CONFIGS = {
    "sd3": dict(),
    "qk_rms_norm": dict(qk_norm="rms_norm", num_layers=3),
    "sd35_dual": dict(qk_norm="rms_norm", dual_attention_layers=(0,)),
    "patch1_rect": dict(patch_size=1, sample_size=8, pos_embed_max_size=12, out_channels=6, num_layers=1),
}
LATENT = {"sd3": (8, 8), "qk_rms_norm": (12, 6), "sd35_dual": (16, 10), "patch1_rect": (7, 12)}


def _sd3(name: str, seed: int = 0):
    """A small random SD3Transformer2DModel with every parameter perturbed (nothing trivially zero)."""
    torch.manual_seed(seed)
    model = diffusers.SD3Transformer2DModel(**{**BASE, **CONFIGS[name]})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_converted_model_matches_diffusers(name: str, tmp_path, capsys) -> None:
    ref_model = _sd3(name)
    src = tmp_path / "sd3"
    ref_model.save_pretrained(src, max_shard_size="60KB" if name == "sd35_dual" else "10GB")  # one sharded
    assert (src / "diffusion_pytorch_model.safetensors.index.json").exists() == (name == "sd35_dual")
    assert main(["convert", "diffusers-sd3", str(src), str(tmp_path / "mm")]) == 0
    assert "wrote" in capsys.readouterr().out
    config, state = convert_sd3_state_dict(ref_model.state_dict(), dict(ref_model.config))
    in_memory = MMDiT(config)
    in_memory.load_state_dict(state)
    models = {"cli": load_model(tmp_path / "mm").eval(), "python": load_diffusers_sd3(src).eval(),
              "state_dict": in_memory.eval()}

    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, ref_model.config.in_channels, *LATENT[name], generator=g)
    t = torch.tensor([0.0, 17 / 64, 63 / 64])  # exact in float32 for both time computations
    text, pooled = torch.randn(3, 7, 24, generator=g), torch.randn(3, 12, generator=g)
    with torch.no_grad():
        ref = ref_model(hidden_states=x, encoder_hidden_states=text, pooled_projections=pooled,
                        timestep=(1 - t) * 1000).sample
        for how, model in models.items():
            out = model(x, t, {"text": text, "pooled": pooled})
            err = (out + ref).abs().max().item()
            print(f"parity {name} ({how}): max |mmflow + diffusers| = {err:.2e} (output scale {ref.abs().max():.2f})")
            assert err < 1e-5, (how, err)


def test_fresh_sincos_table_equals_sd3s() -> None:
    ref_model = diffusers.SD3Transformer2DModel(**{**BASE, "pos_embed_max_size": 24})
    model = MMDiT(mmdit_config_from_sd3(dict(ref_model.config)))
    assert torch.allclose(model.pos_table, ref_model.pos_embed.pos_embed, atol=1e-6)


def test_extra_and_missing_keys_are_named() -> None:
    ref_model = _sd3("sd35_dual")
    state, cfg = ref_model.state_dict(), dict(ref_model.config)
    with pytest.raises(ValueError, match=r"unexpected keys .*\['transformer_blocks.0.attn.extra_proj.weight'\]"):
        convert_sd3_state_dict({**state, "transformer_blocks.0.attn.extra_proj.weight": torch.zeros(1)}, cfg)
    missing = {k: v for k, v in state.items() if k not in ("transformer_blocks.1.attn.norm_added_q.weight",
                                                           "transformer_blocks.0.attn2.to_k.bias")}
    with pytest.raises(ValueError, match=r"missing keys .*\['transformer_blocks.0.attn2.to_k.bias', "
                                         r"'transformer_blocks.1.attn.norm_added_q.weight'\]"):
        convert_sd3_state_dict(missing, cfg)
    # weights of an SD3.5 checkpoint under an SD3 config: the dual-attention keys are unexpected
    with pytest.raises(ValueError, match=r"unexpected keys .*transformer_blocks.0.attn2.to_q.weight"):
        convert_sd3_state_dict(state, {**cfg, "dual_attention_layers": []})
    with pytest.raises(ValueError, match=r"shape mismatches: \['context_embedder.weight: converted \(32, 24\) "
                                         r"vs model \(32, 20\)'"):
        convert_sd3_state_dict(state, {**cfg, "joint_attention_dim": 20})


def test_bad_configs_and_folders(tmp_path, capsys) -> None:
    with pytest.raises(ValueError, match=r"unknown SD3Transformer2DModel config keys \['num_single_layers'\]"):
        mmdit_config_from_sd3({**BASE, "num_single_layers": 2})
    with pytest.raises(ValueError, match="caption_projection_dim 48 must equal"):
        mmdit_config_from_sd3({**BASE, "caption_projection_dim": 48})
    with pytest.raises(ValueError, match="_class_name 'FluxTransformer2DModel'"):
        mmdit_config_from_sd3({**BASE, "_class_name": "FluxTransformer2DModel"})
    assert main(["convert", "diffusers-sd3", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert "no config.json" in capsys.readouterr().err
    src = tmp_path / "sd3"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({**BASE, "pos_embed_max_size": 8}))
    (src / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    _sd3("sd3").save_pretrained(tmp_path / "real")
    (src / "diffusion_pytorch_model.safetensors").write_bytes(
        (tmp_path / "real" / "diffusion_pytorch_model.safetensors").read_bytes())
    assert main(["convert", "diffusers-sd3", str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "shape mismatches" in err and "pos_table: converted (1, 256, 32) vs model (1, 64, 32)" in err
    assert not (tmp_path / "out").exists()
