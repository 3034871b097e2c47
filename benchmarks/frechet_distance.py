"""Frechet distance on 10,000 x 2,048 features: mmflow's eigen route beside scipy's sqrtm route.

The reference is pytorch-fid's logic (`calculate_activation_statistics` + `calculate_frechet_distance`,
also clean-fid's): np.mean / np.cov of the activations, then scipy.linalg.sqrtm of the non-symmetric
product S1 S2 (with its eps * I retry when the result is not finite) and the real part of its trace.
mmflow: FeatureStats.from_features (float64, chunked, torch) and frechet_distance (two symmetric
eigenproblems, see mmflow/metrics/frechet.py). Both run in this process on the same features; the script
reports the times and the absolute difference of the two FD values.

A second, known-answer case measures accuracy, not speed: two covariances with the same eigenvectors
and spectra spanning 10 decades (as Inception covariances do), where Tr((S1 S2)^1/2) = sum sqrt(a_i b_i)
exactly, so each route's error against the truth is known.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/frechet_distance.py            # 10,000 x 2,048
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/frechet_distance.py --n 2000 --dim 256 --repeats 1
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import scipy
import scipy.linalg
import torch

from mmflow.metrics.frechet import FeatureStats, frechet_distance


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def reference_stats(act: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pytorch-fid's calculate_activation_statistics after the network."""
    return np.mean(act, axis=0), np.cov(act, rowvar=False)


def reference_fd(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """pytorch-fid's calculate_frechet_distance (scipy's `disp` argument, deprecated, left out)."""
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def features(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two (n, dim) float32 sets shaped like Inception pool3: non-negative (ReLU then average), correlated,
    a decaying spectrum; the second set's mixing is perturbed so the FD is clearly non-zero."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(dim, dim, generator=gen) / dim**0.5 * torch.logspace(0, -2, dim)  # column scales decay
    bias = 0.3 * torch.randn(dim, generator=gen)
    real = torch.relu(torch.randn(n, dim, generator=gen) @ mix.T + bias)
    mix2 = mix + 0.2 * torch.randn(dim, dim, generator=gen) / dim**0.5 * torch.logspace(0, -2, dim)
    fake = torch.relu(torch.randn(n, dim, generator=gen) @ mix2.T + bias + 0.05)
    return real.numpy(), fake.numpy()


def known_answer(dim: int, seed: int) -> tuple[FeatureStats, FeatureStats, float]:
    """Commuting covariances (shared eigenvectors) with spectra over 1e-10..1 and the exact FD."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    ea, eb = np.logspace(-10, 0, dim), rng.permutation(np.logspace(-10, 0, dim))
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    exact = float(((mu1 - mu2) ** 2).sum() + ea.sum() + eb.sum() - 2 * np.sqrt(ea * eb).sum())
    big = 10**9  # count only gates the full-rank check
    return (FeatureStats(torch.from_numpy(mu1), torch.from_numpy((q * ea) @ q.T), big),
            FeatureStats(torch.from_numpy(mu2), torch.from_numpy((q * eb) @ q.T), big), exact)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3, help="mmflow timings (median); scipy's sqrtm runs once")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(f"torch {torch.__version__}, numpy {np.__version__}, scipy {scipy.__version__}, "
          f"{torch.get_num_threads()} torch thread(s), {platform.processor() or platform.machine()}")

    real, fake = features(args.n, args.dim, args.seed)
    t_ref_stats, (ref_r, ref_f) = timed(lambda: (reference_stats(real), reference_stats(fake)), args.repeats)
    t_our_stats, (our_r, our_f) = timed(
        lambda: (FeatureStats.from_features(torch.from_numpy(real)), FeatureStats.from_features(torch.from_numpy(fake))),
        args.repeats)
    cov_diff = max(np.abs(our_r.cov.numpy() - ref_r[1]).max(), np.abs(our_f.cov.numpy() - ref_f[1]).max())

    t_ref_fd, ref_fd = timed(lambda: reference_fd(*ref_r, *ref_f), 1)
    t_our_fd, our_fd = timed(lambda: frechet_distance(our_r, our_f), args.repeats)
    print(f"\nrandom features {args.n} x {args.dim} (two sets), FD = {our_fd:.6f}")
    print("| step | mmflow (eigen route) | pytorch-fid logic (scipy sqrtm) | ratio | abs diff |")
    print("|---|---|---|---|---|")
    print(f"| statistics of both sets | {t_our_stats:.2f} s | {t_ref_stats:.2f} s | "
          f"{t_ref_stats / t_our_stats:.2f}x | max cov diff {cov_diff:.1e} |")
    print(f"| distance from the statistics | {t_our_fd:.2f} s | {t_ref_fd:.2f} s | "
          f"{t_ref_fd / t_our_fd:.2f}x | FD diff {abs(our_fd - ref_fd):.1e} (rel {abs(our_fd - ref_fd) / ref_fd:.1e}) |")

    a, b, exact = known_answer(args.dim, args.seed)
    t_our_k, our_k = timed(lambda: frechet_distance(a, b), 1)
    t_ref_k, ref_k = timed(lambda: reference_fd(a.mean.numpy(), a.cov.numpy(), b.mean.numpy(), b.cov.numpy()), 1)
    print(f"\nknown answer, {args.dim}-dim commuting covariances, spectra 1e-10..1: exact FD = {exact:.10f}")
    print("| route | time | abs error vs exact |")
    print("|---|---|---|")
    print(f"| mmflow eigen route | {t_our_k:.2f} s | {abs(our_k - exact):.1e} |")
    print(f"| scipy sqrtm (pytorch-fid) | {t_ref_k:.2f} s | {abs(ref_k - exact):.1e} |")


if __name__ == "__main__":
    main()
