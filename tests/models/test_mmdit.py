"""Tests for mmflow/models/mmdit.py: the MM-DiT velocity model for audio, image and video latents."""

from __future__ import annotations

import importlib.util
import json
import logging

import pytest
import torch

from mmflow.config import ConfigError, from_dict, to_dict
from mmflow.flow.cfg import apply_condition_dropout
from mmflow.model_io import load_model, save_model
from mmflow.models import MMDIT_PRESETS, MMDiT, MMDiTConfig, mmdit_config

TEXT, POOLED, CLASSES = 12, 6, 5


def _config(**kw) -> MMDiTConfig:
    base = dict(in_channels=3, patch_size=(2, 2), hidden_size=32, depth=3, num_heads=2, context_dim=TEXT,
                pooled_dim=POOLED, num_classes=CLASSES, qk_norm="rms_norm", dual_attention_layers=(1,))
    return MMDiTConfig(**{**base, **kw})


def _model(seed: int = 0, perturb: bool = True, attention_backend: str = "auto", gradient_checkpointing: bool = False,
           **kw) -> MMDiT:
    """A tiny model; `perturb` replaces the zero-inits with random weights so every path is live."""
    torch.manual_seed(seed)
    model = MMDiT(_config(**kw), attention_backend=attention_backend, gradient_checkpointing=gradient_checkpointing)
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _inputs(model: MMDiT, spatial: tuple[int, ...] = (8, 8), b: int = 2, s: int = 5, seed: int = 1):
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cfg.in_channels, *spatial, generator=g)
    t = torch.rand(b, generator=g)
    cond: dict[str, torch.Tensor] = {}
    if cfg.context_dim:
        cond["text"] = torch.randn(b, s, cfg.context_dim, generator=g)
        cond["text_mask"] = torch.arange(s)[None] < torch.tensor([[s], [s - 2]])[:b]  # row 1: 2 padded tokens
    if cfg.pooled_dim:
        cond["pooled"] = torch.randn(b, cfg.pooled_dim, generator=g)
    if cfg.num_classes:
        cond["label"] = torch.tensor([1, cfg.num_classes])[:b]  # second row: the null label
    return x, t, cond


@pytest.mark.parametrize("patch,spatial,out_channels", [
    ((4,), (16,), None),            # audio (B, C, L)
    ((2, 2), (8, 6), 5),            # image (B, C, H, W)
    ((1, 2, 2), (3, 4, 6), None),   # video (B, C, T, H, W)
])
def test_output_shapes_per_rank_with_rope(patch, spatial, out_channels) -> None:
    model = _model(patch_size=patch, out_channels=out_channels)
    x, t, cond = _inputs(model, spatial)
    out = model(x, t, cond)
    assert out.shape == (2, out_channels or 3, *spatial)
    assert torch.isfinite(out).all() and out.abs().mean() > 1e-3


def test_zero_init_gives_zero_output() -> None:
    model = _model(perturb=False)
    x, t, cond = _inputs(model)
    assert torch.equal(model(x, t, cond), torch.zeros_like(x))


def test_padded_text_tokens_are_invisible() -> None:
    model = _model()
    x, t, cond = _inputs(model)
    out = model(x, t, cond)
    changed = dict(cond, text=cond["text"].clone())
    changed["text"][1, 3:] = torch.randn(2, TEXT) * 10  # row 1's padded tokens
    assert torch.allclose(model(x, t, changed), out, atol=1e-6)
    changed["text"][1, 4] = float("nan")
    assert torch.allclose(model(x, t, changed), out, atol=1e-6)
    changed["text"][1, 0] += 1.0  # a real token does matter
    assert not torch.allclose(model(x, t, changed)[1], out[1], atol=1e-4)


def test_every_condition_reaches_the_output() -> None:
    model = _model()
    x, t, cond = _inputs(model)
    out = model(x, t, cond)
    for key, new in (("pooled", cond["pooled"] + 1), ("label", torch.tensor([2, 0])), ("text", cond["text"] + 1)):
        assert not torch.allclose(model(x, t, dict(cond, **{key: new})), out, atol=1e-4), key
    assert not torch.allclose(model(x, t + 0.1, cond), out, atol=1e-4)


def test_variable_latent_sizes_at_inference() -> None:
    rope = _model()
    for spatial in ((8, 8), (12, 8), (4, 10)):
        x, t, cond = _inputs(rope, spatial)
        assert rope(x, t, cond).shape == (2, 3, *spatial)
    sincos = _model(pos_embed="sincos", pos_embed_max_size=6)  # table of 6 x 6 patches
    x, t, cond = _inputs(sincos, (12, 8))
    assert sincos(x, t, cond).shape == (2, 3, 12, 8)
    x, t, cond = _inputs(sincos, (14, 8))
    with pytest.raises(ValueError, match="axis H has 7 patches, more than the sincos position table's 6"):
        sincos(x, t, cond)


def test_null_condition_and_unconditional_call() -> None:
    model = _model(null_text_length=2)
    x, t, cond = _inputs(model)
    null = model.null_condition(cond)
    assert null["text"].shape == cond["text"].shape
    assert null["text_mask"].tolist() == [[True, True, False, False, False]] * 2
    assert null["pooled"].shape == (2, POOLED) and null["label"].tolist() == [CLASSES, CLASSES]
    assert torch.equal(null["text"][:, :2], model.null_tokens.expand(2, 2, TEXT))
    assert torch.allclose(model(x, t), model(x, t, model.null_condition(x)), atol=1e-6)  # None = null condition
    # it drops into the CFG-training dropout as is (null rows replace cond rows)
    dropped = apply_condition_dropout(cond, null, torch.tensor([False, True]))
    out = model(x, t, dropped)
    assert torch.allclose(out[1], model(x[1:], t[1:], model.null_condition(x[1:]) | {
        "text": null["text"][1:], "text_mask": null["text_mask"][1:]})[0], atol=1e-5)
    zeros = _model(null_text="zeros").null_condition(cond)
    assert torch.equal(zeros["text"], torch.zeros_like(cond["text"])) and zeros["text_mask"].all()
    assert torch.equal(zeros["pooled"], torch.zeros(2, POOLED))
    grads = torch.autograd.grad(model(x, t, model.null_condition(cond)).sum(), [model.null_tokens, model.null_pooled])
    assert all(g.abs().sum() > 0 for g in grads)  # the learned null is trained through CFG dropout


def test_math_backend_equals_sdpa() -> None:
    a = _model(attention_backend="sdpa")
    b = _model(attention_backend="math")
    x, t, cond = _inputs(a)
    assert torch.allclose(a(x, t, cond), b(x, t, cond), atol=1e-5)
    b.set_attention_backend("sdpa")  # a run-time switch: same weights, every block follows
    assert b.backend == "sdpa" and all(block.backend == "sdpa" for block in b.blocks)
    assert torch.equal(a(x, t, cond), b(x, t, cond))
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        b.set_attention_backend("flash")


@pytest.mark.skipif(importlib.util.find_spec("xformers") is not None, reason="xformers is installed here")
def test_xformers_request_without_xformers_logs_and_uses_sdpa(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mmflow.models"):
        model = _model(attention_backend="xformers")
    assert model.backend == "sdpa" and all(block.backend == "sdpa" for block in model.blocks)
    messages = [r.getMessage() for r in caplog.records if r.name == "mmflow.models"]
    assert messages == ["xformers requested but not installed; using torch sdpa"]


def test_gradient_checkpointing_matches() -> None:
    plain = _model().train()
    ckpt = _model().train()
    ckpt.set_gradient_checkpointing(True)
    x, t, cond = _inputs(plain)
    target = torch.randn_like(x)
    grads, calls = [], []
    ckpt.blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))
    for model in (plain, ckpt):
        loss = (model(x, t, cond) - target).pow(2).mean()
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (l1, g1), (l2, g2) = grads
    assert torch.allclose(l1, l2, atol=1e-6)
    assert g1.keys() == g2.keys() == {n for n, _ in plain.named_parameters()} - {"null_tokens", "null_pooled"}
    assert all(torch.allclose(g1[n], g2[n], atol=1e-6) for n in g1)
    assert sum(g.abs().sum() for g in g1.values()) > 0
    assert len(calls) == 2  # the checkpointed block ran again in backward


def test_save_load_round_trip_sharded(tmp_path) -> None:
    model = _model(patch_size=(1, 2, 2), dual_attention_layers=(0, 2), rope_theta=500.0)
    x, t, cond = _inputs(model, (2, 4, 4))
    save_model(model, tmp_path / "one")
    save_model(model, tmp_path / "sharded", max_shard_bytes=40_000)
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    meta = json.loads((tmp_path / "one" / "config.json").read_text())
    assert meta["model_type"] == "mmdit" and meta["config"]["patch_size"] == [1, 2, 2]  # tuples are JSON lists
    for folder in ("one", "sharded"):
        loaded = load_model(tmp_path / folder).eval()
        assert loaded.config == model.config and isinstance(loaded.config.patch_size, tuple)
        assert torch.equal(loaded(x, t, cond), model(x, t, cond))


def test_runtime_settings_are_not_saved_and_old_configs_still_load(tmp_path) -> None:
    model = _model(attention_backend="math", gradient_checkpointing=True)
    save_model(model, tmp_path / "new")
    meta = json.loads((tmp_path / "new" / "config.json").read_text())
    assert not {"attention_backend", "gradient_checkpointing"} & set(meta["config"])
    # an export from before they became run-time settings: the keys are dropped, the defaults apply
    meta["config"] |= {"attention_backend": "xformers", "gradient_checkpointing": True}
    (tmp_path / "new" / "config.json").write_text(json.dumps(meta))
    loaded = load_model(tmp_path / "new").eval()
    assert loaded.config == model.config and loaded.backend == "sdpa" and not loaded.gradient_checkpointing
    x, t, cond = _inputs(model)
    assert torch.allclose(loaded(x, t, cond), model(x, t, cond), atol=1e-5)
    with pytest.raises(ConfigError, match="attention_backend"):  # not a config field any more
        from_dict(MMDiTConfig, {**to_dict(_config()), "attention_backend": "sdpa"})


def test_config_round_trips_and_validates() -> None:
    cfg = _config(dual_attention_layers=(0, 1), pos_embed="sincos")
    assert from_dict(MMDiTConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg
    bad = [({"num_heads": 3}, "num_heads: 3 does not divide hidden_size 32"),
           ({"patch_size": [2, 2, 2], "pos_embed": "sincos"}, "pos_embed: sincos is SD3's 2-D table"),
           ({"dual_attention_layers": [3]}, r"dual_attention_layers: indices \[3\] are not blocks of a depth-3"),
           ({"patch_size": [1, 1, 1, 1]}, "patch_size: needs 1, 2 or 3 entries"),
           ({"qk_norm": "layer_norm"}, "qk_norm")]
    for change, message in bad:
        with pytest.raises(ConfigError, match=message):
            from_dict(MMDiTConfig, {**to_dict(_config()), **change}, source="model.yaml")


def test_presets() -> None:
    cfg = mmdit_config("XL", in_channels=16, patch_size=(1, 2, 2), context_dim=4096)
    assert (cfg.hidden_size, cfg.depth, cfg.num_heads, cfg.head_dim) == (1152, 28, 16, 72)
    assert {"S", "B", "L", "XL", "test", "tiny"} <= set(MMDIT_PRESETS)
    for name in MMDIT_PRESETS:
        mmdit_config(name)
    with pytest.raises(KeyError, match="unknown MM-DiT preset 'XXL'"):
        mmdit_config("XXL")
    tiny = MMDiT(mmdit_config("test", in_channels=4))  # unconditional: cond None or {}
    x = torch.randn(1, 4, 4, 4)
    assert tiny(x, torch.tensor(0.5)).shape == x.shape and tiny(x, torch.tensor([0.5]), {}).shape == x.shape


def test_bad_inputs_name_the_fault() -> None:
    model = _model()
    x, t, cond = _inputs(model)
    cases = [
        (lambda: model(x[:, :, None], t, cond), r"patch_size \(2, 2\) takes image latents.*got video latents"),
        (lambda: model(x[:, :, :7], t, cond), r"axis H \(dim 2\) has size 7, not divisible by its patch size 2"),
        (lambda: model(x[:, :2], t, cond), r"expected 3 latent channels \(dim 1\), got 2"),
        (lambda: model(x, t[:1], cond), r"t must be a scalar or shaped \(2,\), got \(1,\)"),
        (lambda: model(x, t, {k: v for k, v in cond.items() if k != "pooled"}), r"missing keys \['pooled'\]"),
        (lambda: model(x, t, {**cond, "audio": x}), r"unexpected keys \['audio'\]"),
        (lambda: model(x, t, {**cond, "text": cond["text"][..., :4]}), r"cond\['text'\] must be shaped \(2, S, 12\)"),
        (lambda: model(x, t, {**cond, "pooled": cond["pooled"][:1]}), r"cond\['pooled'\] must be shaped \(2, 6\)"),
        (lambda: model(x, t, {**cond, "text_mask": cond["text_mask"].float()}), r"cond\['text_mask'\] must be a bool"),
        (lambda: model(x, t, {**cond, "label": torch.tensor([0, 6])}), r"class labels must lie in \[0, 5\]"),
    ]
    for call, message in cases:
        with pytest.raises((ValueError, TypeError), match=message):
            call()


def test_block_compiles_without_graph_breaks() -> None:
    model = _model(depth=2, dual_attention_layers=(0,))
    x, t, cond = _inputs(model)
    from mmflow.models.patchify import patchify
    from mmflow.models.rope import rope_angles

    tokens, grid = patchify(x, (2, 2))
    h = model.x_embedder(tokens)
    ctx = model.context_embedder(cond["text"])
    c = model.t_embedder(t)
    rope = rope_angles(grid, model.config.head_dim)
    key_mask = torch.cat([torch.ones(2, h.shape[1], dtype=torch.bool), cond["text_mask"]], dim=1)
    torch._dynamo.reset()
    for block in model.blocks:  # a joint block with dual attention, and the context_pre_only last block
        explained = torch._dynamo.explain(block)(h, ctx, c, rope, key_mask)
        assert explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()


# ---- CUDA-only (run on a GPU machine) ------------------------------------------------------------------


@pytest.mark.cuda
def test_cuda_bf16_flash_matches_float32() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = _model(hidden_size=128, num_heads=2, depth=2).cuda()  # head_dim 64: flash-eligible
    x, t, cond = _inputs(model, (16, 16))
    x, t = x.cuda(), t.cuda()
    cond = {k: v.cuda() for k, v in cond.items() if k != "text_mask"}  # no mask: flash can run
    ref = model(x, t, cond)
    with torch.autocast("cuda", dtype=torch.bfloat16), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        out = model(x, t, cond)
    err = (out.float() - ref).abs().max() / ref.abs().max()
    assert err < 5e-2, err
    bf16 = model.to(torch.bfloat16)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        out = bf16(x.bfloat16(), t, {k: v.bfloat16() if v.is_floating_point() else v for k, v in cond.items()})
    assert out.dtype == torch.bfloat16 and ((out.float() - ref).abs().max() / ref.abs().max()) < 5e-2


@pytest.mark.cuda
def test_cuda_xformers_model_matches_sdpa() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("xformers")
    a = _model(attention_backend="sdpa").cuda()
    b = _model(attention_backend="xformers").cuda()
    assert b.backend == "xformers"
    x, t, cond = _inputs(a, (16, 16))
    x, t, cond = x.cuda(), t.cuda(), {k: v.cuda() for k, v in cond.items()}
    with torch.autocast("cuda", dtype=torch.float16):
        diff = (a(x, t, cond).float() - b(x, t, cond).float()).abs().max()
    assert diff < 2e-2, diff


def test_mlp_recomputes_gelu_same_gradients_less_saved_memory() -> None:
    import torch.nn.functional as F

    from mmflow.models.mmdit import Mlp

    torch.manual_seed(0)
    mlp = Mlp(16, 64)
    x = torch.randn(3, 5, 16, requires_grad=True)
    saved: dict[str, list[int]] = {"ours": [], "plain": []}

    def run(fn, key):
        x.grad = None
        mlp.zero_grad()
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved[key].append(t.numel()) or t, lambda t: t):
            out = fn()
        out.square().sum().backward()
        return out.detach(), [x.grad.clone()] + [p.grad.clone() for p in mlp.parameters()]

    out, grads = run(lambda: mlp(x), "ours")
    ref, ref_grads = run(lambda: mlp.fc2(F.gelu(mlp.fc1(x), approximate="tanh")), "plain")
    torch.testing.assert_close(out, ref)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    activations = 3 * 5 * 64  # one (B, N, mlp_hidden) tensor
    assert sum(saved["plain"]) - sum(saved["ours"]) == activations  # gelu(a) is no longer kept


@pytest.mark.parametrize("null_text", ["learned", "zeros"])
def test_dropped_rows_see_the_models_own_null_condition(null_text) -> None:
    model = _model(null_text=null_text)
    x, t, cond = _inputs(model)
    drop = torch.tensor([True, False])
    expected = apply_condition_dropout(cond, model.null_condition(cond), drop)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, cond, drop=drop), model(x, t, expected), atol=0, rtol=0)
        assert not torch.allclose(model(x, t, cond, drop=drop), model(x, t, cond))


def test_bf16_autocast_with_qk_norm_warns_nothing_and_stays_close_to_fp32() -> None:
    """qk RMSNorm runs in fp32 under autocast: no mixed-dtype fallback warning, output near the fp32 one."""
    import warnings

    model = _model()
    x, t, cond = _inputs(model)
    ref = model(x, t, cond)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, t, cond)
    assert out.dtype == torch.bfloat16
    rel = ((out.float() - ref).norm() / ref.norm()).item()
    assert rel < 0.05, rel


def test_concat_channels_join_the_latents_absent_means_zeros_and_dropout_keeps_them() -> None:
    model = _model(patch_size=(1, 2, 2), concat_channels=4)
    x, t, cond = _inputs(model, spatial=(3, 4, 4))
    extra = torch.randn(2, 4, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    plain = model(x, t, cond)
    assert torch.equal(plain, model(x, t, {**cond, "concat": torch.zeros_like(extra)}))
    joined = model(x, t, {**cond, "concat": extra})
    assert joined.shape == x.shape and not torch.allclose(joined, plain)
    drop = torch.tensor([True, False])  # row 0 loses its text but keeps its conditioning image
    dropped = model(x, t, {**cond, "concat": extra}, drop=drop)
    assert torch.allclose(dropped[1], joined[1], atol=1e-6)
    null = model.null_condition(x)
    assert torch.allclose(dropped[0], model(x[:1], t[:1], {**{k: v[:1] for k, v in null.items()}, "concat": extra[:1]})[0],
                          atol=1e-6)
    with pytest.raises(ValueError, match=r"cond\['concat'\] must be shaped \(2, 4, 3, 4, 4\)"):
        model(x, t, {**cond, "concat": extra[:, :3]})


@pytest.mark.parametrize("patch_t,dual", [(1, (1,)), (2, ())])
def test_padded_frames_are_invisible_so_an_image_in_a_clip_batch_is_computed_as_alone(patch_t, dual) -> None:
    # joint image+video training: a 1-frame latent padded to the clip's frames with cond["frames"] = 1 gives
    # its frame the velocity the model gives the 1-frame latent on its own (RoPE puts frame 0 at t = 0 both ways)
    model = _model(patch_size=(patch_t, 2, 2), dual_attention_layers=dual)
    x, t, cond = _inputs(model, spatial=(4, 4, 4))
    frames = torch.tensor([4, patch_t])  # row 0 a whole clip, row 1 one patch of frames (its image and padding)
    out = model(x, t, {**cond, "frames": frames})
    assert torch.allclose(out[0], model(x[:1], t[:1], {k: v[:1] for k, v in cond.items()})[0], atol=1e-5)
    alone = model(x[1:, :, :patch_t], t[1:], {k: v[1:] for k, v in cond.items()})
    assert torch.allclose(out[1, :, :patch_t], alone[0], atol=1e-5)
    noisy = x.clone()
    noisy[1, :, patch_t:] = 100.0  # what the padding holds does not matter
    assert torch.allclose(model(noisy, t, {**cond, "frames": frames})[1, :, :patch_t], alone[0], atol=1e-5)
    dropped = model(x, t, {**cond, "frames": frames}, drop=torch.tensor([False, True]))  # CFG dropout keeps frames
    null = {k: v[:1] for k, v in model.null_condition(x).items()}
    assert torch.allclose(dropped[1, :, :patch_t], model(x[1:, :, :patch_t], t[1:], null)[0], atol=1e-5)
    with pytest.raises(ValueError, match=r"cond\['frames'\] must lie in \[1, 4\]"):
        model(x, t, {**cond, "frames": torch.tensor([5, 1])})
    with pytest.raises(ValueError, match=r"integer tensor"):
        model(x, t, {**cond, "frames": torch.tensor([1.0, 1.0])})


def test_frames_is_a_video_condition_only() -> None:
    model = _model()
    x, t, cond = _inputs(model)
    with pytest.raises(ValueError, match=r"unexpected keys \['frames'\]"):
        model(x, t, {**cond, "frames": torch.tensor([1, 1])})


def test_scalar_conditions_reach_the_output_start_at_zero_and_survive_cfg_dropout() -> None:
    # stable-audio's timing: seconds_start / seconds_total per row, embedded into the conditioning vector
    timing = ("seconds_start", "seconds_total")
    fresh = _model(patch_size=(4,), scalar_conditions=timing, perturb=False)
    assert all(int(torch.count_nonzero(e.mlp[2].weight.detach())) == 0 for e in fresh.scalar_embedders.values())
    model = _model(patch_size=(4,), scalar_conditions=timing)
    x, t, cond = _inputs(model, spatial=(16,))
    cond = {**cond, "seconds_start": torch.zeros(2), "seconds_total": torch.tensor([4.0, 2.5])}
    out = model(x, t, cond)
    longer = model(x, t, {**cond, "seconds_total": torch.tensor([4.0, 3.0])})
    assert torch.allclose(out[0], longer[0], atol=1e-6) and not torch.allclose(out[1], longer[1], atol=1e-4)
    dropped = model(x, t, cond, drop=torch.tensor([True, False]))  # the text is dropped, the timing kept
    null = {k: v[:1] for k, v in model.null_condition(x).items()}
    timed_null = {**null, "seconds_start": torch.zeros(1), "seconds_total": torch.tensor([4.0])}
    assert torch.allclose(dropped[0], model(x[:1], t[:1], timed_null)[0], atol=1e-6)
    with pytest.raises(ValueError, match=r"missing keys \['seconds_start', 'seconds_total'\]"):
        model(x, t, {k: v for k, v in cond.items() if not k.startswith("seconds")})
    with pytest.raises(ValueError, match=r"cond\['seconds_total'\] must be shaped \(2\)"):
        model(x, t, {**cond, "seconds_total": torch.ones(2, 1)})
    with pytest.raises(ConfigError, match="scalar_conditions: names must be distinct"):
        from_dict(MMDiTConfig, {"scalar_conditions": ["label"]})


def test_a_zero_initialised_interval_embedding_leaves_the_model_unchanged() -> None:
    old = _model()
    new = MMDiT(_config(interval_embed=True))
    state, changes = new.adapt_init_state(old.state_dict())  # init_from a flow model
    new.load_state_dict(state)
    assert changes == ["interval_embedder: new, starts at zero output (the model starts as the one loaded)"]
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 3, 4, 4, generator=g), torch.rand(2, generator=g)
    cond = {"text": torch.randn(2, 5, TEXT, generator=g), "pooled": torch.randn(2, POOLED, generator=g),
            "label": torch.tensor([1, 2])}
    with torch.no_grad():
        for h in (None, torch.zeros(2), torch.tensor([0.3, 1.0])):
            assert torch.equal(new.eval()(x, t, cond, h=h), old(x, t, cond))
        with pytest.raises(ValueError, match="no interval embedding"):
            old(x, t, cond, h=torch.zeros(2))


def test_text_positions_start_at_zero_and_make_the_model_see_word_order() -> None:
    old = _model()
    new = MMDiT(_config(text_positions=6))
    state, changes = new.adapt_init_state(old.state_dict())  # init_from a model without positions
    new.load_state_dict(state)
    assert changes == ["text_pos: 6 new text positions, start at zero (the model starts as the one loaded)"]
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 3, 4, 4, generator=g), torch.rand(2, generator=g)
    text = torch.randn(2, 5, TEXT, generator=g)
    cond = {"text": text, "pooled": torch.randn(2, POOLED, generator=g), "label": torch.tensor([1, 2])}
    swapped = {**cond, "text": text[:, [1, 0, 2, 3, 4]]}  # two tokens change places
    with torch.no_grad():
        assert torch.equal(new.eval()(x, t, cond), old.eval()(x, t, cond))
        # without positions the joint attention is blind to the order of the text tokens ...
        assert torch.allclose(old(x, t, swapped), old(x, t, cond), atol=1e-5)
        new.text_pos.normal_(generator=g)
        # ... with them it is not
        assert (new(x, t, swapped) - new(x, t, cond)).abs().max() > 1e-3
        with pytest.raises(ValueError, match="7 text tokens, but this model has 6 text positions"):
            new(x, t, {**cond, "text": torch.randn(2, 7, TEXT)})


def test_text_positions_need_a_text_stream() -> None:
    with pytest.raises(ConfigError, match="text_positions: 4 positions, but the model has no text stream"):
        _config(context_dim=0, text_positions=4).validate()


def test_abs_positions_add_the_sinusoidal_table_of_each_token_and_no_weights() -> None:
    plain = _model(patch_size=(2,), dual_attention_layers=())
    placed = MMDiT(_config(patch_size=(2,), dual_attention_layers=(), abs_positions=True))
    placed.load_state_dict(plain.state_dict())  # no parameters of its own: checkpoints load both ways
    seen = {}
    for name, model in (("plain", plain), ("placed", placed)):
        model.blocks[0].register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(name, args[0]))
    x = torch.ones(2, 3, 16)  # every token the same: what tells them apart is where they sit
    cond = {"text": torch.zeros(2, 5, TEXT), "pooled": torch.zeros(2, POOLED), "label": torch.tensor([1, 2])}
    with torch.no_grad():
        plain.eval()(x, torch.rand(2), cond), placed.eval()(x, torch.rand(2), cond)
    assert torch.allclose(seen["plain"], seen["plain"][:, :1].expand_as(seen["plain"]))  # 8 equal tokens
    p = torch.arange(8.0)[:, None]  # token positions; pair j turns at theta ** (-2 j / D)
    freqs = 10000.0 ** (-torch.arange(0, 32, 2) / 32.0)
    table = torch.cat([torch.sin(p * freqs), torch.cos(p * freqs)], dim=1)  # (8, 32)
    assert torch.allclose(seen["placed"] - seen["plain"], table.expand(2, 8, 32), atol=1e-5)


def test_abs_positions_are_for_rope() -> None:
    with pytest.raises(ConfigError, match="abs_positions: adds to rope's relative positions"):
        _config(pos_embed="sincos", abs_positions=True).validate()


def test_text_refiner_starts_as_the_identity_and_reads_the_words_together() -> None:
    old = _model()
    new = MMDiT(_config(text_refiner=2, text_positions=6))
    state, changes = new.adapt_init_state(old.state_dict())  # init_from a model without a refiner
    new.load_state_dict(state)
    assert "text_refiner: 2 new blocks, start as the identity (the model starts as the one loaded)" in changes
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 3, 4, 4, generator=g), torch.rand(2, generator=g)
    text = torch.randn(2, 5, TEXT, generator=g)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    cond = {"text": text, "text_mask": mask, "pooled": torch.randn(2, POOLED, generator=g), "label": torch.tensor([1, 2])}
    with torch.no_grad():
        assert torch.equal(new.eval()(x, t, cond), old.eval()(x, t, cond))
        for p in new.text_refiner.parameters():  # a trained refiner: every weight non-zero
            p.normal_(std=0.1, generator=g)
        out = new(x, t, cond)
        assert (out - old(x, t, cond)).abs().max() > 1e-3
        # padded tokens are no keys to the refiner either: the padded row is the row of its 3 real tokens alone
        short = {"text": text[1:, :3], "text_mask": mask[1:, :3], "pooled": cond["pooled"][1:], "label": cond["label"][1:]}
        assert torch.allclose(new(x[1:], t[1:], short), out[1:], atol=1e-5)
    # it trains: every refiner weight gets a gradient through the joint blocks
    new.train()
    new(x, t, cond).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in new.text_refiner.parameters())


def test_text_refiner_needs_a_text_stream() -> None:
    with pytest.raises(ConfigError, match="text_refiner: 2 refiner blocks, but the model has no text stream"):
        _config(context_dim=0, text_refiner=2).validate()


def _whitening_inputs(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, dict]:
    x, t = torch.randn(2, 3, 4, 4, generator=g), torch.rand(2, generator=g)
    scale = torch.linspace(0.1, 5.0, TEXT)  # token states far from white: some directions 50x others
    text = torch.randn(2, 5, TEXT, generator=g) * scale + 2.0
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    return x, t, {"text": text, "text_mask": mask, "pooled": torch.randn(2, POOLED, generator=g),
                  "label": torch.tensor([1, 2])}


def test_text_whitening_starts_as_the_identity_and_a_model_gaining_it_keeps_its_function() -> None:
    from mmflow.text.whitening import fit_whitening

    g = torch.Generator().manual_seed(0)
    old = _model()
    new = MMDiT(_config(text_whitening=True))
    state, changes = new.adapt_init_state(old.state_dict())  # init_from a model without whitening
    new.load_state_dict(state)
    assert changes == ["text_whitening: new, measured before the first step (the model starts as the one loaded)"]
    assert not new.text_whitening_measured
    x, t, cond = _whitening_inputs(g)
    states = torch.randn(400, TEXT, generator=g) * torch.linspace(0.1, 5.0, TEXT) + 2.0
    w = fit_whitening(states)
    with torch.no_grad():
        assert torch.equal(new.eval()(x, t, cond), old.eval()(x, t, cond))  # unmeasured: the identity
        new.set_text_whitening(w, keep_function=True)
        assert new.text_whitening_measured and int(new.text_whiten_count) == 400
        assert torch.allclose(new(x, t, cond), old(x, t, cond), atol=1e-5)
        # what the context embedder now reads is the whitened tokens: their scales equal within eps's floor
        seen = {}
        new.context_embedder.register_forward_pre_hook(lambda m, args: seen.__setitem__("in", args[0]))
        new(x, t, cond)
        assert torch.allclose(seen["in"][0], w.apply(cond["text"][0]), atol=1e-5)
        # without keep_function a fresh model just reads the whitened tokens
        fresh = MMDiT(_config(text_whitening=True)).eval()
        weight = fresh.context_embedder.weight.clone()
        fresh.set_text_whitening(w)
        assert torch.equal(fresh.context_embedder.weight, weight)
    # the statistics are saved with the weights and come back
    again = MMDiT(_config(text_whitening=True))
    again.load_state_dict(new.state_dict())
    assert again.text_whitening_measured and torch.equal(again.text_whiten, new.text_whiten)


def test_text_whitening_refuses_what_it_cannot_take() -> None:
    from mmflow.text.whitening import fit_whitening

    with pytest.raises(ConfigError, match="text_whitening: whitens the text tokens, but the model has no text stream"):
        _config(context_dim=0, text_whitening=True).validate()
    plain = _model()
    with pytest.raises(ValueError, match="has no text whitening"):
        plain.set_text_whitening(fit_whitening(torch.randn(50, TEXT)))
    whitened = MMDiT(_config(text_whitening=True))
    with pytest.raises(ValueError, match=f"this model's text tokens are {TEXT} wide"):
        whitened.set_text_whitening(fit_whitening(torch.randn(50, TEXT + 1)))
    # weights that read whitened tokens, loaded into a model that would feed them raw ones
    with pytest.raises(ValueError, match="set model.mmdit.text_whitening: true"):
        plain.adapt_init_state(whitened.state_dict())
