"""Tests for mmflow/tokenizers/latent_stats.py: streaming moments (exact vs torch, mergeable across
processes), measured statistics normalise latents, and they survive save/load."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmflow.model_io import load_model, save_model
from mmflow.tokenizers import ImageVAE, LatentMoments, apply_latent_stats, image_vae_config, measure_latent_stats


def _latents(seed: int = 0) -> torch.Tensor:
    """(10, 3, 4, 5) with very different per-channel means and spreads."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(10, 3, 4, 5, generator=g, dtype=torch.float64)
    return z * torch.tensor([0.1, 2.0, 30.0]).view(1, 3, 1, 1) + torch.tensor([5.0, -1.0, 100.0]).view(1, 3, 1, 1)


def test_streaming_moments_equal_batch_statistics() -> None:
    z = _latents()
    moments = LatentMoments.zeros(3)
    for chunk in z.split([1, 4, 5]):  # uneven batches
        moments.update(chunk)
    flat = z.transpose(0, 1).reshape(3, -1)
    assert moments.count == 200
    assert torch.allclose(moments.mean, flat.mean(1), rtol=1e-12)
    assert torch.allclose(moments.std, flat.std(1, unbiased=False), rtol=1e-9)
    halves = LatentMoments.zeros(3).update(z[:3]).merge(LatentMoments.zeros(3).update(z[3:]))
    assert halves.count == moments.count and torch.allclose(halves.total, moments.total)
    packed = LatentMoments.from_tensor(moments.to_tensor() + halves.to_tensor())  # what an all-reduce of 2 ranks does
    assert packed.count == 400 and torch.allclose(packed.mean, moments.mean) and torch.allclose(packed.std, moments.std)
    # any rank: (B, C, L) audio and (B, C, T, H, W) video latents reduce over everything but channels
    video = torch.randn(2, 3, 2, 3, 3)
    assert LatentMoments.zeros(3).update(video).count == 2 * 2 * 3 * 3


def test_moment_errors() -> None:
    with pytest.raises(ValueError, match=r"latents must be \(B, 3, \.\.\.\), got shape \(2, 4, 5\)"):
        LatentMoments.zeros(3).update(torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match="NaN or Inf"):
        LatentMoments.zeros(1).update(torch.tensor([[float("nan")]]))
    with pytest.raises(ValueError, match=r"channels \[1\] have zero variance"):
        z = torch.randn(4, 2, 3)
        z[:, 1] = 7.0
        LatentMoments.zeros(2).update(z).shift_scale()
    with pytest.raises(ValueError, match="count is 0"):
        LatentMoments.zeros(2).mean
    with pytest.raises(ValueError, match="cannot merge moments of 2 and 3 channels"):
        LatentMoments.zeros(2).merge(LatentMoments.zeros(3))


def _vae() -> ImageVAE:
    torch.manual_seed(0)
    return ImageVAE(image_vae_config("test")).eval()


def _images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 8, 8, generator=g) * 2 - 1).clamp(-1, 1)


def test_measured_stats_normalise_latents_and_survive_save_load(tmp_path) -> None:
    vae = _vae()
    batches = [_images(4, s) for s in range(3)]
    moments = measure_latent_stats(vae, ({"image": b} for b in batches), key="image")
    assert moments.channels == 4 and moments.count == 12 * 4 * 4
    apply_latent_stats(vae, *moments.shift_scale())
    x = torch.cat(batches)
    with torch.no_grad():
        z = vae.encode_latents(x).transpose(0, 1).reshape(4, -1)  # (C, N)
        assert torch.allclose(z.mean(1), torch.zeros(4), atol=1e-5)
        assert torch.allclose(z.std(1, unbiased=False), torch.ones(4), atol=1e-4)
        assert torch.allclose(vae.decode_latents(vae.encode_latents(x)), vae.decode(vae.encode(x).mean), atol=1e-5)
    save_model(vae, tmp_path / "vae")
    loaded = load_model(tmp_path / "vae").eval()
    assert loaded.config.latent_shift == vae.config.latent_shift == moments.mean.tolist()
    with torch.no_grad():
        assert torch.equal(loaded.encode_latents(x), vae.encode_latents(x))


def test_sampled_latents_have_the_posterior_spread() -> None:
    vae = _vae()
    x = _images(8, 0)
    g = torch.Generator().manual_seed(0)
    mean_only = measure_latent_stats(vae, [x])
    sampled = measure_latent_stats(vae, [x] * 4, sample=True, generator=g)
    with torch.no_grad():
        post_var = vae.encode(x).logvar.exp().transpose(0, 1).reshape(4, -1).mean(1).double()
    # law of total variance: Var[sample] = Var[mean] + E[posterior variance], up to sampling noise
    assert torch.allclose(sampled.std.square(), mean_only.std.square() + post_var, rtol=0.15)
    assert measure_latent_stats(vae, [x] * 5, max_batches=2).count == 2 * mean_only.count


def test_measure_and_apply_errors() -> None:
    vae = _vae()
    with pytest.raises(KeyError, match=r"keys \['pixels'\]; pass key="):
        measure_latent_stats(vae, [{"pixels": _images(1, 0)}])
    with pytest.raises(ValueError, match="no batches"):
        measure_latent_stats(vae, [])
    with pytest.raises(ValueError, match="latent scale has 3 entries, the tokenizer has 4 latent channels"):
        apply_latent_stats(vae, [0.0] * 4, [1.0] * 3)
    with pytest.raises(ValueError, match="latent scale must be nonzero"):
        apply_latent_stats(vae, [0.0] * 4, [1.0, 0.0, 1.0, 1.0])
    assert vae.config.latent_scale is None  # a refused update leaves the config untouched


def _rank_main(rank: int, world: int, store: str, data: torch.Tensor, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        local = LatentMoments.zeros(3).update(data[rank::world])  # each rank sees its own shard
        torch.save(local.all_reduce().to_tensor(), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_all_reduce_over_two_processes_equals_one_pass(tmp_path) -> None:
    z = _latents(3)
    mp.spawn(_rank_main, args=(2, str(tmp_path / "store"), z, str(tmp_path / "m")), nprocs=2, join=True)
    full = LatentMoments.zeros(3).update(z)
    for rank in range(2):
        got = LatentMoments.from_tensor(torch.load(tmp_path / f"m.{rank}", weights_only=True))
        assert got.count == full.count
        assert torch.allclose(got.total, full.total) and torch.allclose(got.total_sq, full.total_sq)
    assert torch.equal(full.all_reduce().total, full.total)  # without a process group: unchanged
