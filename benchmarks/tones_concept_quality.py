"""A tones model on a folder of prompts (recipe runs, not a timing): the tones probe's accuracies, what timbres
it reads, and the mean levels of the samples' first eight harmonics against the fundamental (dB), optionally
through another decoder of the model's latents (a decoder-only fine-tune: the new-timbre study of issue 17).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tones_concept_quality.py checkpoints/tones_t2m \\
        --prompts data/tones/concept_organ_test --num 48 [--tokenizer runs/organ_decoder/model/models/tokenizer]

Every call samples the folder's first --num captions from the same seeds (--seed, one per row), so rows of a
table differ by the model and the decoder only.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

from mmflow.metrics.probes.tones import analyse, score_tones
from mmflow.pipeline import FlowPipeline
from mmflow.train.lora_training import check_same_latents

ACCURACIES = ("pitch", "mode", "pattern", "tempo", "timbre", "all")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="a tones_t2m model: run, checkpoint, export or LoRA run")
    p.add_argument("--prompts", required=True, help="a tones folder whose metadata.jsonl captions are the prompts")
    p.add_argument("--num", type=int, default=48)
    p.add_argument("--tokenizer", default=None, help="decode through this tokenizer folder instead (same latents)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=48)
    args = p.parse_args()
    rows = [json.loads(line) for line in (Path(args.prompts) / "metadata.jsonl").read_text().splitlines() if line]
    prompts = [r["text"] for r in rows[: args.num]]
    pipe = FlowPipeline.from_pretrained(args.model)
    if args.tokenizer:
        check_same_latents(Path(args.tokenizer), Path(pipe.task.encoders.tokenizer_path))
        pipe.use_tokenizer(Path(args.tokenizer))
    media = pipe(prompts, seed=args.seed, batch_size=args.batch_size).media
    score = score_tones(media, prompts)
    harmonics = np.mean([analyse(w[0]).features[:8] * 20.0 for w in media], axis=0)  # dB against the fundamental
    report = {"model": args.model, "tokenizer": args.tokenizer or pipe.task.encoders.tokenizer_path, "n": len(prompts),
              **{k: round(score[k], 3) for k in ACCURACIES},
              "timbres_read": dict(Counter(it["pred"]["timbre"] for it in score["items"]).most_common()),
              "harmonics_db": [round(float(h), 1) for h in harmonics]}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
