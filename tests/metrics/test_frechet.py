import math

import numpy as np
import pytest
import scipy.linalg
import torch

from mmflow.errors import MissingInput, UserError
from mmflow.metrics.errors import FeatureMismatch
from mmflow.metrics.frechet import (
    BadStatsFile,
    FeatureStats,
    NotEnoughSamples,
    frechet_distance,
    trace_sqrt_product,
)


def scipy_fd(mu1, s1, mu2, s2) -> float:
    """pytorch-fid's calculate_frechet_distance: scipy sqrtm of the non-symmetric product."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def random_spd(d: int, cond: float, rng: np.random.Generator) -> np.ndarray:
    """A (d, d) SPD matrix with eigenvalues log-spaced over [1/cond, 1]."""
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * np.logspace(-math.log10(cond), 0, d)) @ q.T


def stats_of(mean: np.ndarray, cov: np.ndarray, count: int = 10**6) -> FeatureStats:
    return FeatureStats(torch.from_numpy(mean), torch.from_numpy(cov), count)


@pytest.mark.parametrize("d", [2, 16, 64, 200])
def test_matches_scipy_sqrtm_on_random_features(d):
    rng = np.random.default_rng(d)
    mix = rng.standard_normal((d, d)) / math.sqrt(d)
    x = rng.standard_normal((3 * d + 10, d)) @ mix
    y = rng.standard_normal((2 * d + 30, d)) @ mix * 1.3 + 0.2  # scaled and shifted
    a, b = FeatureStats.from_features(x), FeatureStats.from_features(y)
    np.testing.assert_allclose(a.mean.numpy(), x.mean(0), atol=1e-12)
    np.testing.assert_allclose(a.cov.numpy(), np.cov(x, rowvar=False), atol=1e-12)
    ref = scipy_fd(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-8, abs=1e-10)


@pytest.mark.parametrize("cond", [1e4, 1e8])
def test_matches_scipy_sqrtm_when_ill_conditioned(cond):
    rng = np.random.default_rng(1)
    d = 48
    s1, s2 = random_spd(d, cond, rng), random_spd(d, cond, rng)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    ours = frechet_distance(stats_of(mu1, s1), stats_of(mu2, s2))
    assert ours == pytest.approx(scipy_fd(mu1, s1, mu2, s2), rel=1e-7)


def test_trace_sqrt_product_of_commuting_matrices_is_exact_even_when_singular():
    # Same eigenvectors: Tr((A B)^1/2) = sum sqrt(a_i b_i), known exactly; half of A's spectrum is 0 and B
    # spans 12 decades. Rounding of ~1e-16 on a zero eigenvalue becomes ~1e-8 after the square root, so
    # ~1e-8 per zero eigenvalue is the floor of any method (scipy's sqrtm is off by 9e-8 here, ours by 7e-8).
    rng = np.random.default_rng(2)
    d = 64
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    ea = np.concatenate([np.zeros(d // 2), rng.uniform(0.5, 2, d // 2)])
    eb = np.logspace(-12, 0, d)
    got = float(trace_sqrt_product(torch.from_numpy((q * ea) @ q.T), torch.from_numpy((q * eb) @ q.T)))
    assert got == pytest.approx(np.sqrt(ea * eb).sum(), rel=1e-7)


def test_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    # ||mu1 - mu2||^2 = 1 + 0 + 4 = 5; sum (sqrt v1 - sqrt v2)^2 = (1-3)^2 + (2-1)^2 + 0 = 5
    assert frechet_distance(stats_of(mu1, np.diag(v1)), stats_of(mu2, np.diag(v2))) == pytest.approx(10.0, rel=1e-12)


def test_closed_form_for_full_covariances():
    # Independent of the code under test: the definition with S1^1/2 from scipy's symmetric sqrtm.
    rng = np.random.default_rng(3)
    d = 10
    s1, s2 = random_spd(d, 100.0, rng) * 3, random_spd(d, 10.0, rng)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    r1 = scipy.linalg.sqrtm(s1).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(r1 @ s2 @ r1).real)
    assert frechet_distance(stats_of(mu1, s1), stats_of(mu2, s2)) == pytest.approx(expected, rel=1e-10)


def test_shifted_gaussian_samples_approach_the_closed_form():
    # N(0, I) vs N(m, 4 I) in d dims: FD = |m|^2 + d (2 - 1)^2; sampled stats land near it.
    gen = torch.Generator().manual_seed(0)
    d, n = 8, 50_000
    m = torch.full((d,), 0.5, dtype=torch.float64)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = 2 * torch.randn(n, d, generator=gen, dtype=torch.float64) + m
    fd = frechet_distance(FeatureStats.from_features(x), FeatureStats.from_features(y))
    assert fd == pytest.approx(float(m.square().sum()) + d, rel=0.02)


def test_identical_sets_give_zero():
    x = torch.randn(300, 32, generator=torch.Generator().manual_seed(4)) * 5 + 3
    a = FeatureStats.from_features(x)
    assert frechet_distance(a, FeatureStats.from_features(x.clone())) == pytest.approx(0.0, abs=1e-9)


def test_from_features_is_centred_before_the_product_far_from_the_origin():
    # mean 1e6, std 1: raw second moments would lose every digit of the covariance
    x = torch.randn(1000, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    got = FeatureStats.from_features(x + 1e6, chunk=64).cov
    torch.testing.assert_close(got, torch.cov(x.T), rtol=1e-6, atol=1e-8)


def test_merge_equals_stats_of_the_concatenation():
    gen = torch.Generator().manual_seed(6)
    parts = [torch.randn(n, 12, generator=gen) * (i + 1) + i for i, n in enumerate([1, 40, 0, 77])]
    merged = FeatureStats.from_features(parts[0])
    for p in parts[1:]:
        merged = merged.merge(FeatureStats.from_features(p))
    whole = FeatureStats.from_features(torch.cat(parts))
    assert merged.count == whole.count == 118
    torch.testing.assert_close(merged.mean, whole.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(merged.cov, whole.cov, rtol=1e-10, atol=1e-12)


def test_merge_refuses_other_features():
    a = FeatureStats.from_features(torch.randn(5, 3), describe={"name": "inception"})
    with pytest.raises(FeatureMismatch, match="3-dim and 4-dim"):
        a.merge(FeatureStats.from_features(torch.randn(5, 4)))
    with pytest.raises(FeatureMismatch, match="clip"):
        a.merge(FeatureStats.from_features(torch.randn(5, 3), describe={"name": "clip"}))


def test_save_load_round_trip(tmp_path):
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(7))
    describe = {"extractor": {"name": "inception", "sha256": "ab12"}, "data": "folder:deadbeef"}
    stats = FeatureStats.from_features(x, describe=describe)
    path = stats.save(tmp_path / "sub" / "real.stats.safetensors")
    back = FeatureStats.load(path)
    assert back.count == 50 and back.dim == 6 and back.describe == describe
    assert torch.equal(back.mean, stats.mean) and torch.equal(back.cov, stats.cov)
    assert back.mean.dtype == torch.float64
    assert [p.name for p in path.parent.iterdir()] == ["real.stats.safetensors"]  # no temporaries left


def test_load_names_the_file_and_key_at_fault(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(MissingInput, match="nothere.safetensors"):
        FeatureStats.load(tmp_path / "nothere.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors at all")
    with pytest.raises(BadStatsFile, match="junk.safetensors"):
        FeatureStats.load(junk)
    other = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "pt"})
    with pytest.raises(BadStatsFile, match="'format' is 'pt'"):
        FeatureStats.load(other)
    no_cov = tmp_path / "nocov.safetensors"
    save_file({"mean": torch.zeros(2, dtype=torch.float64)}, str(no_cov),
              metadata={"format": "mmflow.feature_stats", "count": "3", "dim": "2"})
    with pytest.raises(BadStatsFile, match="missing tensor 'cov'"):
        FeatureStats.load(no_cov)


def test_too_few_samples_is_an_error_naming_the_numbers():
    gen = torch.Generator().manual_seed(8)
    real = FeatureStats.from_features(torch.randn(100, 64, generator=gen))
    fake = FeatureStats.from_features(torch.randn(40, 64, generator=gen))
    with pytest.raises(NotEnoughSamples) as info:
        frechet_distance(real, fake, names=("real", "fake"))
    msg = str(info.value)
    assert "fake set has 40 samples of 64-dim" in msg and "at least 65" in msg and "fewer dimensions" in msg
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)
    # dim + 1 is enough; the escape hatch computes the (biased) value anyway
    frechet_distance(real, FeatureStats.from_features(torch.randn(65, 64, generator=gen)))
    assert math.isfinite(frechet_distance(real, fake, allow_rank_deficient=True))


def test_different_widths_are_refused_naming_both():
    with pytest.raises(FeatureMismatch, match="2048-dim.*512-dim"):
        frechet_distance(stats_of(np.zeros(2048), np.eye(2048)), stats_of(np.zeros(512), np.eye(512)))
