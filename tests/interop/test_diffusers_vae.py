"""Tests for mmflow/interop/diffusers_vae.py: diffusers AutoencoderKL weights -> ImageVAE, exactly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

diffusers = pytest.importorskip("diffusers")

from mmflow.cli import main  # noqa: E402
from mmflow.interop.diffusers_vae import (  # noqa: E402
    convert_diffusers_vae,
    convert_diffusers_vae_state_dict,
    image_vae_config_from_diffusers,
    load_diffusers_vae,
)
from mmflow.model_io import load_model  # noqa: E402
from mmflow.tokenizers import ImageVAE  # noqa: E402

SD3_SCALING, SD3_SHIFT = 1.5305, 0.0609  # SD3's VAE config.json
SD_SCALING = 0.18215  # SD1.x (diffusers' default)

CONFIGS = {
    # SD3-like: 16 latent channels, no quant convs, shift + scale
    "sd3": dict(block_out_channels=(32, 64, 64), latent_channels=16, norm_num_groups=16, layers_per_block=1,
                use_quant_conv=False, use_post_quant_conv=False, scaling_factor=SD3_SCALING, shift_factor=SD3_SHIFT),
    # SD1/SDXL-like: 4 channels with quant convs, scaling only
    "sd": dict(block_out_channels=(16, 32), latent_channels=4, norm_num_groups=8, layers_per_block=2),
    # three resnets per encoder level, no mid attention, per-channel latents_mean / latents_std
    "lpb3_noattn": dict(block_out_channels=(16, 16), latent_channels=4, norm_num_groups=8, layers_per_block=3,
                        mid_block_add_attention=False, latents_mean=(0.1, -0.2, 0.3, 0.0),
                        latents_std=(1.5, 0.5, 2.0, 1.0), scaling_factor=0.5),
}
SIZES = {"sd3": (16, 24), "sd": (12, 10), "lpb3_noattn": (8, 14)}


def _autoencoder(name: str, seed: int = 0):
    """A small random AutoencoderKL with every parameter perturbed (GroupNorm affine is not trivially 1/0)."""
    torch.manual_seed(seed)
    levels = len(CONFIGS[name]["block_out_channels"])
    model = diffusers.AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * levels,
                                    up_block_types=("UpDecoderBlock2D",) * levels, **CONFIGS[name])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _diffusers_normalise(ref, mean: torch.Tensor) -> torch.Tensor:
    """What diffusers pipelines feed their denoiser: (z - shift_factor) * scaling_factor, or per-channel."""
    c = ref.config
    if c.latents_mean is not None:
        m, s = (torch.tensor(v).view(1, -1, 1, 1) for v in (c.latents_mean, c.latents_std))
        return (mean - m) * c.scaling_factor / s
    return (mean - (c.shift_factor or 0.0)) * c.scaling_factor


def _max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to the output scale (at least 1)."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_converted_vae_matches_diffusers(name: str, tmp_path) -> None:
    ref = _autoencoder(name)
    config, state = convert_diffusers_vae_state_dict(ref.state_dict(), dict(ref.config))
    in_memory = ImageVAE(config)
    in_memory.load_state_dict(state)
    src = tmp_path / "vae"
    ref.save_pretrained(src, max_shard_size="50KB" if name == "sd" else "10GB")  # one sharded checkpoint
    assert (src / "diffusion_pytorch_model.safetensors.index.json").exists() == (name == "sd")
    convert_diffusers_vae(src, tmp_path / "mm")
    assert main(["convert", "diffusers-vae", str(src), str(tmp_path / "cli")]) == 0
    models = {"state_dict": in_memory.eval(), "folder": load_model(tmp_path / "mm").eval(),
              "cli": load_model(tmp_path / "cli").eval(),
              "python": load_diffusers_vae(src).eval()}

    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, *SIZES[name], generator=g) * 2 - 1
    with torch.no_grad():
        post = ref.encode(x).latent_dist
        z = torch.randn(post.mean.shape, generator=g)
        ref_dec = ref.decode(z).sample
        ref_norm = _diffusers_normalise(ref, post.mean)
        ref_from_norm = ref.decode(post.mean).sample
        for how, model in models.items():
            ours = model.encode(x)
            errs = {"mean": _max_rel_err(ours.mean, post.mean), "logvar": _max_rel_err(ours.logvar, post.logvar),
                    "decode": _max_rel_err(model.decode(z), ref_dec),
                    "encode_latents": _max_rel_err(model.encode_latents(x), ref_norm),
                    "decode_latents": _max_rel_err(model.decode_latents(ref_norm), ref_from_norm)}
            print(f"parity {name} ({how}): " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
            assert max(errs.values()) < 1e-5, (how, errs)


def _blocks(levels: int) -> dict:
    return {"down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels}


def test_latent_stats_become_per_channel_lists() -> None:
    cfg = image_vae_config_from_diffusers({**CONFIGS["sd3"], **_blocks(3)})
    assert cfg.latent_shift == [SD3_SHIFT] * 16 and cfg.latent_scale == [SD3_SCALING] * 16
    assert not cfg.use_quant_conv and cfg.downsample_factor == 4
    sd = image_vae_config_from_diffusers({"block_out_channels": [32, 64], **_blocks(2)})  # diffusers' defaults
    assert sd.latent_shift == [0.0] * 4 and sd.latent_scale == [SD_SCALING] * 4 and sd.use_quant_conv
    lpb3 = image_vae_config_from_diffusers({**CONFIGS["lpb3_noattn"], **_blocks(2)})
    assert lpb3.latent_shift == [0.1, -0.2, 0.3, 0.0] and lpb3.latent_scale == [0.5 / 1.5, 1.0, 0.25, 0.5]
    assert not lpb3.mid_block_attention and lpb3.layers_per_block == 3


def test_pipeline_folder_legacy_names_and_dtype(tmp_path) -> None:
    ref = _autoencoder("sd")
    ref.save_pretrained(tmp_path / "pipe" / "vae")
    model = load_diffusers_vae(tmp_path / "pipe", dtype=torch.bfloat16)  # a pipeline folder's vae/
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    # pre-0.14 attention names (query/key/value/proj_attn) convert to the same weights
    renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for k, v in ref.state_dict().items():
        for new, old in renames.items():
            k = k.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
        legacy[k] = v
    assert "encoder.mid_block.attentions.0.query.weight" in legacy
    _, a = convert_diffusers_vae_state_dict(legacy, dict(ref.config))
    _, b = convert_diffusers_vae_state_dict(ref.state_dict(), dict(ref.config))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_extra_and_missing_keys_are_named() -> None:
    ref = _autoencoder("sd")
    state, cfg = ref.state_dict(), dict(ref.config)
    with pytest.raises(ValueError, match=r"unexpected keys .*\['encoder.extra.weight'\]"):
        convert_diffusers_vae_state_dict({**state, "encoder.extra.weight": torch.zeros(1)}, cfg)
    gone = ("decoder.up_blocks.1.resnets.2.conv1.bias", "encoder.mid_block.attentions.0.to_k.weight")
    with pytest.raises(ValueError, match=r"missing keys .*\['decoder.up_blocks.1.resnets.2.conv1.bias', "
                                         r"'encoder.mid_block.attentions.0.to_k.weight'\]"):
        convert_diffusers_vae_state_dict({k: v for k, v in state.items() if k not in gone}, cfg)
    # SD1 weights under a config without quant convs: those keys are unexpected
    with pytest.raises(ValueError, match=r"unexpected keys .*'post_quant_conv.bias'.*'quant_conv.weight'"):
        convert_diffusers_vae_state_dict(state, {**cfg, "use_quant_conv": False, "use_post_quant_conv": False})
    with pytest.raises(ValueError, match=r"unexpected keys .*encoder.mid_block.attentions.0.group_norm.bias"):
        convert_diffusers_vae_state_dict(state, {**cfg, "mid_block_add_attention": False})
    with pytest.raises(ValueError, match=r"shape mismatches: .*'decoder.conv_in.weight: converted \(32, 4, 3, 3\) "
                                         r"vs model \(32, 8, 3, 3\)'"):
        convert_diffusers_vae_state_dict(state, {**cfg, "latent_channels": 8})


def test_bad_configs_and_folders(tmp_path) -> None:
    base = dict(_autoencoder("sd").config)
    with pytest.raises(ValueError, match=r"unknown AutoencoderKL config keys \['temporal_compression_ratio'\]"):
        image_vae_config_from_diffusers({**base, "temporal_compression_ratio": 4})
    with pytest.raises(ValueError, match="_class_name 'AutoencoderKLWan'"):
        image_vae_config_from_diffusers({**base, "_class_name": "AutoencoderKLWan"})
    with pytest.raises(ValueError, match=r"act_fn 'gelu' \(only 'silu'\).*out_channels 4 != in_channels 3"
                                         r"|out_channels 4 != in_channels 3.*act_fn 'gelu'"):
        image_vae_config_from_diffusers({**base, "act_fn": "gelu", "out_channels": 4})
    with pytest.raises(ValueError, match=r"down_block_types \['DownEncoderBlock2D'\] \(expected 2 x"):
        image_vae_config_from_diffusers({**base, "down_block_types": ["DownEncoderBlock2D"]})
    with pytest.raises(ValueError, match="use_quant_conv True with use_post_quant_conv False"):
        image_vae_config_from_diffusers({**base, "use_post_quant_conv": False})
    with pytest.raises(ValueError, match="shift_factor and latents_mean are both set"):
        image_vae_config_from_diffusers({**base, "shift_factor": 0.1, "latents_mean": [0.0] * 4,
                                         "latents_std": [1.0] * 4})
    with pytest.raises(ValueError, match="latents_std has 3 entries but latent_channels is 4"):
        image_vae_config_from_diffusers({**base, "latents_mean": [0.0] * 4, "latents_std": [1.0] * 3})
    with pytest.raises(FileNotFoundError, match=r"no config.json \(nor vae/config.json\)"):
        convert_diffusers_vae(tmp_path / "nowhere", tmp_path / "out")
    src = tmp_path / "bin_only"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(base))
    with pytest.raises(FileNotFoundError, match="only safetensors weights are supported"):
        load_diffusers_vae(src)
    save_file({"encoder.conv_in.weight": torch.zeros(1)}, str(src / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ValueError, match="missing keys"):
        convert_diffusers_vae(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
