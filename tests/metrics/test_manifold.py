import numpy as np
import pytest
import torch

from mmflow.errors import UserError
from mmflow.metrics.errors import FeatureMismatch, NotEnoughSamples
from mmflow.metrics.manifold import knn_radii, manifold_report


def brute_force(real: np.ndarray, fake: np.ndarray, k_pr: int, k_dc: int) -> dict[str, float]:
    """The definitions on the full distance matrices, as the PRDC / improved-P&R reference code computes them."""
    def dist(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    rr, ff, rf = dist(real, real), dist(fake, fake), dist(real, fake)  # (N, N), (M, M), (N, M)
    kth = lambda d, k: np.sort(d, axis=1)[:, k]  # noqa: E731  (column 0 is the point itself)
    r_pr, r_dc, f_pr = kth(rr, k_pr), kth(rr, k_dc), kth(ff, k_pr)
    return {
        "precision": (rf <= r_pr[:, None]).any(axis=0).mean(),
        "recall": (rf <= f_pr[None, :]).any(axis=1).mean(),
        "density": (rf <= r_dc[:, None]).sum(axis=0).mean() / k_dc,
        "coverage": (rf.min(axis=1) <= r_dc).mean(),
    }


@pytest.mark.parametrize("chunk", [7, 1024])
def test_chunked_computation_matches_the_definitions(chunk):
    rng = np.random.default_rng(0)
    real = rng.standard_normal((57, 5))
    fake = rng.standard_normal((43, 5)) * 1.5 + 0.4  # partly overlapping: no metric at 0 or 1
    ref = brute_force(real, fake, 3, 5)
    got = manifold_report(real, fake, chunk=chunk).to_dict()
    for name, value in ref.items():
        assert got[name] == pytest.approx(value, abs=1e-6), name
    assert 0 < got["precision"] < 1 and 0 < got["recall"] < 1
    assert (got["k_pr"], got["k_dc"], got["num_real"], got["num_fake"]) == (3, 5, 57, 43)


def test_identical_sets():
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(1))
    r = manifold_report(x, x.clone())
    assert r.precision == 1.0 and r.recall == 1.0 and r.coverage == 1.0
    # each real ball holds its own point and its k neighbours: (k + 1) hits per ball, / k per fake point
    assert r.density == pytest.approx(6 / 5)


def test_two_draws_of_one_distribution_reach_the_expected_density_and_coverage():
    # Naeem et al.: E[density] = 1; E[coverage] -> 1 - 2^-k for N = M (0.969 at k = 5)
    gen = torch.Generator().manual_seed(2)
    real, fake = torch.randn(2000, 4, generator=gen), torch.randn(2000, 4, generator=gen)
    r = manifold_report(real, fake)
    assert r.density == pytest.approx(1.0, abs=0.1)
    assert r.coverage == pytest.approx(1 - 2**-5, abs=0.02)
    assert r.precision > 0.85 and r.recall > 0.85


def test_disjoint_far_apart_sets_score_zero():
    gen = torch.Generator().manual_seed(3)
    real = torch.randn(100, 8, generator=gen)
    fake = torch.randn(80, 8, generator=gen) + 1000.0
    r = manifold_report(real, fake)
    assert (r.precision, r.recall, r.density, r.coverage) == (0.0, 0.0, 0.0, 0.0)


def test_mode_dropping_keeps_precision_and_loses_recall():
    # real: 4 far-apart modes; a fair fake draws all 4, a mode-dropping one only the first. k-NN balls
    # under-cover a 6-D Gaussian (precision ~0.9 even for a fair draw), so compare with the fair draw.
    gen = torch.Generator().manual_seed(4)
    centres = torch.eye(4, 6) * 50  # (4, 6)
    draw = lambda modes: (torch.randn(len(modes), 250, 6, generator=gen) + centres[modes, None, :]).reshape(-1, 6)  # noqa: E731
    real = draw([0, 1, 2, 3])  # (1000, 6)
    fair, dropped = manifold_report(real, draw([0, 1, 2, 3])), manifold_report(real, draw([0]))
    assert fair.precision > 0.8 and fair.recall > 0.8 and fair.coverage > 0.9
    assert dropped.precision == pytest.approx(fair.precision, abs=0.05)
    assert dropped.recall == pytest.approx(fair.recall / 4, abs=0.05)
    assert dropped.coverage == pytest.approx(fair.coverage / 4, abs=0.05)


def test_far_offset_features_keep_their_neighbours():
    # Features 1e4 from the origin with unit spread: float32 |x|^2 - 2xy + |y|^2 would be all rounding
    # without the centring; the result must equal that of the same sets near the origin.
    gen = torch.Generator().manual_seed(5)
    real, fake = torch.randn(300, 3, generator=gen), torch.randn(300, 3, generator=gen) + 0.5
    near, far = manifold_report(real, fake), manifold_report(real + 1e4, fake + 1e4)
    assert far.precision == pytest.approx(near.precision, abs=0.01)
    assert far.recall == pytest.approx(near.recall, abs=0.01)
    assert far.density == pytest.approx(near.density, abs=0.02)


def test_too_small_sets_name_k_and_the_count():
    gen = torch.Generator().manual_seed(6)
    real, fake = torch.randn(50, 4, generator=gen), torch.randn(3, 4, generator=gen)
    with pytest.raises(NotEnoughSamples, match=r"k = 3 needs at least 4 fake samples.*fake set has 3") as info:
        manifold_report(real, fake)
    assert isinstance(info.value, UserError)
    with pytest.raises(NotEnoughSamples, match=r"k = 5 needs at least 6 real samples.*real set has 5"):
        manifold_report(real[:5], real)
    with pytest.raises(NotEnoughSamples, match=r"k = 2 needs at least 3 given samples"):
        knn_radii(real[:2], (2,))


def test_widths_must_match():
    with pytest.raises(FeatureMismatch, match=r"\(10, 4\).*\(10, 5\)"):
        manifold_report(torch.zeros(10, 4), torch.zeros(10, 5))


def test_equal_k_for_both_pairs_of_metrics() -> None:
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(40, 3, generator=g), torch.randn(30, 3, generator=g)
    same = manifold_report(real, fake, k_pr=3, k_dc=3)
    apart = manifold_report(real, fake, k_pr=3, k_dc=4)
    assert (same.precision, same.recall) == (apart.precision, apart.recall)
    assert knn_radii(real, (3, 3))[3].shape == (40,)
