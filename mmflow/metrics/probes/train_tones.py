"""Train the tones probe's timbre classifier on the generated set and write checkpoints/probes/tones.

    python -m mmflow.metrics.probes.train_tones --out checkpoints/probes/tones

No data folder: the train split is generated (mmflow.data.tones, 1000 clips), the classifier trains on
their timbre features (each clip clean and degraded), and the whole probe (rules and classifier) is
scored on the generated test split, the held-out timbre-pattern-mode combinations; those numbers go
into the probe's config.json. About a minute on one CPU core. (A module of its own: `python -m` on the
module that registers TonesProbe would register it twice.)
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

from mmflow.metrics.probes.tones import train_tones_probe

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmflow.metrics.probes.train_tones", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the probe folder to write (checkpoints/probes/tones)")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    command = shlex.join(["python", "-m", "mmflow.metrics.probes.train_tones",
                          *(argv if argv is not None else sys.argv[1:])])
    start = time.perf_counter()
    _, score = train_tones_probe(args.out, epochs=args.epochs, seed=args.seed, command=command)
    acc = ", ".join(f"{a} {score[a]:.3f}" for a in ("pitch", "mode", "pattern", "tempo", "timbre", "all"))
    extra = f"; extra timbres {score['extra_timbres']:.3f}" if "extra_timbres" in score else ""
    print(f"tones: on the test split ({score['n']} real clips): {acc}{extra}; {time.perf_counter() - start:.0f} s; "
          f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
