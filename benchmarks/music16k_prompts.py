"""Prompts a music16k model never trained on, for its worked example's check (recipe runs, not a timing).

music16k shares no held-out split, so the recipe's own validation asks the training captions back. This writes
captions in the set's own words whose (instrument, key, mode) combination no training clip plays: every
instrument in both modes, `--per` captions each, key and tempo (80-140 bpm) drawn at random, "with chords" for
the polyphonic instruments as often as the set has them. Deterministic in --seed.

    python benchmarks/music16k_prompts.py ../shared/data/music16k --out runs/music16k_novel.txt
    mmflow eval RUN --check music --metrics "" --prompts runs/music16k_novel.txt --num 96
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from mmflow.metrics.probes.music import INSTRUMENTS, KEYS, pitch_class
from mmflow.metrics.probes.music_check import MOODS

MOOD_OF = {mode: mood for mood, mode in MOODS.items()}


def novel_captions(rows: list[dict], per: int, seed: int) -> list[str]:
    """`per` captions per (instrument, mode) whose (instrument, key, mode) is not in `rows` (metadata dicts)."""
    seen = {(r["instrument"], pitch_class(r["key"]), r["mode"]) for r in rows}  # C# and Db are one key
    chords = {r["instrument"] for r in rows if r.get("chords")}
    rng = random.Random(seed)
    out = []
    for instrument in INSTRUMENTS:
        for mode in ("major", "minor"):
            keys = [k for k in KEYS if (instrument, pitch_class(k), mode) not in seen]
            if not keys:
                raise ValueError(f"every key of {instrument} {mode} is in the training set: nothing is novel")
            for _ in range(per):
                key, bpm = rng.choice(keys), rng.randint(80, 140)
                with_chords = " with chords" if instrument in chords and rng.random() < 0.4 else ""
                out.append(f"a {MOOD_OF[mode]} {instrument} melody{with_chords} in {key} {mode} at {bpm} bpm")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data", help="the music16k folder (its metadata.jsonl)")
    p.add_argument("--out", required=True, help="prompts file to write, one per line")
    p.add_argument("--per", type=int, default=4, help="captions per instrument and mode")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rows = [json.loads(line) for line in (Path(args.data) / "metadata.jsonl").read_text().splitlines() if line.strip()]
    captions = novel_captions(rows, args.per, args.seed)
    Path(args.out).write_text("\n".join(captions) + "\n")
    print(f"wrote {len(captions)} captions to {args.out}")


if __name__ == "__main__":
    main()
