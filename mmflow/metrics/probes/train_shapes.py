"""Train the shapes probe's shape classifier on the generated set and write checkpoints/probes/shapes.

    python -m mmflow.metrics.probes.train_shapes --out checkpoints/probes/shapes

No data folder: the train split is generated (mmflow.data.shapes, 3000 one-object and 1500 two-object
images), the classifier trains on their mask crops, and the whole probe (rules and classifier) is
scored on the generated test split, the held-out colour-shape combinations; those numbers go into the
probe's config.json. About a minute on one CPU core. (A module of its own: `python -m` on the module
that registers ShapesProbe would register it twice.)
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

from mmflow.metrics.probes.shapes import train_shapes_probe

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmflow.metrics.probes.train_shapes", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the probe folder to write (checkpoints/probes/shapes)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    command = shlex.join(["python", "-m", "mmflow.metrics.probes.train_shapes",
                          *(argv if argv is not None else sys.argv[1:])])
    start = time.perf_counter()
    _, score = train_shapes_probe(args.out, epochs=args.epochs, seed=args.seed, command=command)
    acc = ", ".join(f"{a} {score[a]:.3f}" for a in ("shape", "colour", "position", "size", "all", "both_objects",
                                                      "relation", "two_all"))
    print(f"shapes: on the test split ({score['n_one']} one-object, {score['n_two']} two-object real images): "
          f"{acc}; {time.perf_counter() - start:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
