"""Where a tones_t2m model goes wrong (recipe run, not a timing): the tones probe's readings per held-out
combination, beside the same prompts with the other mode, which training did play.

Each held-out (timbre, pattern, mode) combination of mmflow/data/tones.py has a mirror, the same timbre and
pattern in the other mode, that is in the train split. If the model fails the held-out prompts but plays their
mirrors right, it does not compose; if it fails both alike, it has not learnt the melodies at all. Per
combination: how many samples read as each mode and each pattern, and how many start on the asked tonic; per
pattern and note of the melody, how often that note lies the asked interval above the first one (to the nearest
semitone), which tells a wrong third (the mode's note) from pitches that wander everywhere.

Then whether the mode word steers the sample at all: every held-out prompt again with its mode flipped, each row
from the same starting noise as its original (row i's noise comes from its seed alone). A model that follows the
word reads major for one and minor for the other; one that ignores it reads the same for both, whatever is asked.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tones_breakdown.py checkpoints/tones_t2m --guidance 4
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import replace

import numpy as np

from mmflow.data.tones import ARPEGGIO_STEPS, MODES, SCALE_STEPS, TonePrompt, TonesConfig, test_prompts
from mmflow.metrics.probes.tones import analyse, score_tones
from mmflow.pipeline import FlowPipeline

ACCURACIES = ("pitch", "mode", "pattern", "tempo", "timbre", "all")


def interval_hits(waves: np.ndarray, prompts: list[TonePrompt]) -> dict[str, list[list[int]]]:
    """Per melodic pattern, per note index of one cycle: [hits, clips] where the note the probe reads (rounded to a
    semitone) is the asked interval above the clip's first note. waves (B, N) at 16 kHz. A clip with fewer notes
    counts only for the notes it has; "note" prompts (one pitch) are left out."""
    out: dict[str, list[list[int]]] = {}
    for wave, p in zip(waves, prompts):
        if p.pattern == "note":
            continue
        steps = (SCALE_STEPS if p.pattern == "scale" else ARPEGGIO_STEPS)[p.mode]
        counts = out.setdefault(p.pattern, [[0, 0] for _ in steps])
        notes = [midi for _, _, midi in analyse(wave).notes]
        for i, midi in enumerate(notes[:len(steps)]):
            counts[i][0] += int(round(midi - notes[0]) == steps[i])
            counts[i][1] += 1
    return out


def breakdown(pipe: FlowPipeline, prompts: list, guidance: float | None, seed: int,
              batch_size: int) -> tuple[dict, list]:
    """The probe's accuracies over `prompts` and, per (timbre, pattern, mode), counts of what the samples play;
    and the probe's items (one per sample, for `mode_pairs`)."""
    out = pipe([p.text for p in prompts], seed=seed, guidance=guidance, batch_size=batch_size)
    scores = score_tones(out.media, prompts)
    combos: dict[str, Counter] = {}
    for p, item in zip(prompts, scores["items"]):
        c = combos.setdefault(f"{p.timbre} {p.pattern} {p.mode or '-'}", Counter())
        c.update({"n": 1, f"mode {item['pred']['mode']}": 1, f"pattern {item['pred']['pattern']}": 1,
                  "tonic right": int(item["pitch"])})
    waves = out.media.float().mean(dim=1).numpy()  # (B, N): channels mixed, as the probe reads them
    return {**{k: scores[k] for k in ACCURACIES}, "combinations": {k: dict(sorted(v.items())) for k, v in combos.items()},
            "intervals": interval_hits(waves, prompts)}, scores["items"]


def mode_pairs(pipe: FlowPipeline, prompts: list, a: list, guidance: float | None, seed: int,
               batch_size: int) -> dict:
    """Each prompt beside itself with the other mode, from the same noise (`a`: the probe's items of `prompts`
    sampled at `seed`): of the pairs with a mode, how often the probe reads the same mode in both (the word
    ignored) and how often both right."""
    other = {MODES[0]: MODES[1], MODES[1]: MODES[0]}
    flipped = [replace(q, mode=other[q.mode]) if q.mode else q for q in prompts]
    b = score_tones(pipe([p.text for p in flipped], seed=seed, guidance=guidance, batch_size=batch_size).media,
                    flipped)["items"]
    rows = [(x, y) for q, x, y in zip(prompts, a, b) if q.mode is not None]
    return {"pairs": len(rows), "same_mode_read": sum(x["pred"]["mode"] == y["pred"]["mode"] for x, y in rows),
            "both_right": sum(bool(x.get("mode")) and bool(y.get("mode")) for x, y in rows)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="run, checkpoint or exported folder of a tones_t2m model")
    p.add_argument("--guidance", type=float, default=None, help="default: the model's sample section")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=40)
    p.add_argument("--out", default=None, help="also write the report here (JSON)")
    args = p.parse_args()
    pipe = FlowPipeline.from_pretrained(args.model)
    held_out = test_prompts(TonesConfig())
    other = {MODES[0]: MODES[1], MODES[1]: MODES[0]}
    mirrors = [replace(q, mode=other[q.mode]) for q in held_out if q.mode is not None]  # all in the train split
    report, items = {}, {}
    for name, prompts in (("held_out", held_out), ("mirrors_seen_in_training", mirrors)):
        report[name], items[name] = breakdown(pipe, prompts, args.guidance, args.seed, args.batch_size)
    for name, r in report.items():
        print(f"{name}: " + "  ".join(f"{k} {r[k]:.3f}" for k in ACCURACIES))
        for combo, counts in r["combinations"].items():
            print(f"    {combo:24s} {counts}")
        for pattern, counts in r["intervals"].items():
            print(f"    {pattern} notes on the asked interval above the first: "
                  + " ".join(f"{h}/{n}" for h, n in counts))
    pairs = mode_pairs(pipe, held_out, items["held_out"], args.guidance, args.seed, args.batch_size)
    report["mode_flipped_same_noise"] = pairs
    print(f"mode flipped, same noise: {pairs['same_mode_read']} of {pairs['pairs']} pairs read the same mode "
          f"(the word ignored), {pairs['both_right']} read both right")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
