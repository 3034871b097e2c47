"""The tones probe on real generated clips (recipe-free, not a timing): accuracy per attribute on the tones
test split and on train clips, clean and degraded (8-bit mu-law, white noise at 20 dB SNR, an 8th-order
4 kHz low-pass, all three), then harsher degradations to find where it breaks.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tones_probe.py [--train 300]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
from scipy.signal import butter, sosfilt

from mmflow.data.tones import SAMPLE_RATE, TonesConfig, make_tones
from mmflow.metrics.probes import load_probe
from mmflow.metrics.probes.tones import mu_law, score_tones

ATTRIBUTES = ("pitch", "mode", "pattern", "tempo", "timbre", "all")
Degrade = Callable[[np.ndarray], np.ndarray]


def noise(db: float, rng: np.random.Generator) -> Degrade:
    """White noise at `db` dB SNR (against the clip's own power), clipped to [-1, 1]."""
    return lambda x: np.clip(x + rng.normal(0, np.sqrt(np.mean(x ** 2) / 10 ** (db / 10)), x.shape), -1, 1)


def low_pass(hz: float) -> Degrade:
    sos = butter(8, hz, fs=SAMPLE_RATE, output="sos")
    return lambda x: sosfilt(sos, x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", type=int, default=300, help="train clips scored beside the test split")
    args = p.parse_args()
    probe = load_probe(name="tones")
    rng = np.random.default_rng(123)
    common = {"clean": lambda x: x, "mu-law 8 bit": mu_law, "noise 20 dB SNR": noise(20, rng),
              "low-pass 4 kHz": low_pass(4000)}
    common["all three"] = lambda x: mu_law(common["noise 20 dB SNR"](common["low-pass 4 kHz"](x)))
    harsh = {"noise 10 dB SNR": noise(10, rng), "noise 0 dB SNR": noise(0, rng), "low-pass 2 kHz": low_pass(2000),
             "low-pass 1 kHz": low_pass(1000), "mu-law 4 bit": lambda x: mu_law(x, 4)}
    cfg = TonesConfig(n_train=args.train, seed=0)
    for split, degradations in (("test", {**common, **harsh}), ("train", common)):
        items = make_tones(cfg, split)
        for name, f in degradations.items():
            waves = np.stack([f(it.wave.astype(np.float64)) for it in items])
            s = score_tones(waves, [it.prompt for it in items], probe)
            print(f"{split:5s} n={s['n']:3d} {name:16s} " + " ".join(f"{k} {s[k]:.3f}" for k in ATTRIBUTES), flush=True)


if __name__ == "__main__":
    main()
