"""Which text-encoder layer says where each object goes? A linear probe per hidden state of the encoder.

For every two-object caption of a shapes folder ("a red star to the left of a blue circle"), the states of each
object's colour and shape words are labelled with the side that object sits on along the relation's axis
(left/top = 0, right/bottom = 1: the first object's side for "left of" / "above", the second's for "right of" /
"below"). A logistic regression fitted on three quarters of the captions and scored on the last quarter tells
how linearly readable that side is at each layer; "first" (is this the first-mentioned object?) is the control:
word position alone. A caption's side needs order AND the relation word, which a model reading tokens as a set
(the MM-DiT without text positions) can only get from the encoder's states.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/text_layer_probe.py data/shapes/train --items 2000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from mmflow.text import TextEncoder, TextEncoderConfig

# the side (0 = left/top, 1 = right/bottom) of the (first, second) object for each relation
SIDES = {"left of": (0, 1), "right of": (1, 0), "above": (0, 1), "below": (1, 0)}


def word_states(enc: TextEncoder, captions: list[str], words: list[list[str]]) -> tuple[list[torch.Tensor], list[list[int]]]:
    """Every hidden state (L + 1 of (S, D)) per caption, and the token index of each word in `words` (in order)."""
    tok, model = enc.tokenizer, enc.model
    states, where = [], []
    for text, ws in zip(captions, words):
        batch = tok(text, return_tensors="pt")
        with torch.no_grad():
            hs = model(**batch, output_hidden_states=True).hidden_states  # L + 1 of (1, S, D)
        pieces = tok.convert_ids_to_tokens(batch["input_ids"][0])
        at, start = [], 0
        for w in ws:  # the first piece of each word, searched left to right (a colour word may repeat)
            i = next((i for i in range(start, len(pieces)) if pieces[i].lstrip("Ġ▁").lower() == w.lower()), None)
            at.append(-1 if i is None else i)
            start = start if i is None else i + 1
        states.append(torch.stack([h[0] for h in hs]))  # (L + 1, S, D)
        where.append(at)
    return states, where


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="a shapes folder (python -m mmflow.data.shapes): its metadata.jsonl")
    ap.add_argument("--encoder", default="minilm", help="text encoder folder, or minilm")
    ap.add_argument("--items", type=int, default=2000, help="two-object captions to use")
    args = ap.parse_args()

    rows = [json.loads(line) for line in (args.data / "metadata.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("relation") in SIDES][: args.items]
    if len(rows) < 40:
        raise SystemExit(f"{args.data}/metadata.jsonl has {len(rows)} two-object captions; a probe needs 40 or more")
    words = [[r["objects"][0]["colour"], r["objects"][0]["shape"], r["objects"][1]["colour"], r["objects"][1]["shape"]]
             for r in rows]
    enc = TextEncoder(TextEncoderConfig(path=args.encoder, max_length=32))
    states, where = word_states(enc, [r["text"] for r in rows], words)

    feats: dict[tuple[str, int], list[np.ndarray]] = {}
    side, first = [], []
    for r, h, at in zip(rows, states, where):
        if min(at) < 0:
            continue  # a word the tokenizer split oddly: left out rather than guessed
        for k in (0, 1):
            for role, idx in (("colour", at[2 * k]), ("shape", at[2 * k + 1])):
                for layer in range(h.shape[0]):
                    feats.setdefault((role, layer), []).append(h[layer, idx].numpy())
            side.append(SIDES[r["relation"]][k])
            first.append(k)
    y_side, y_first = np.array(side), np.array(first)
    cut = (len(y_side) // 4 * 3) & ~1  # whole captions (two rows each) on either side of the cut
    print(f"{len(y_side) // 2} captions ({cut // 2} to fit, {(len(y_side) - cut) // 2} held out), "
          f"{args.encoder}; held-out accuracy of a logistic regression on one word's state")
    print("| layer | colour word: side | shape word: side | colour word: first |")
    print("|---|---|---|---|")
    layers = sorted({layer for _, layer in feats})
    for layer in layers:
        scores = []
        for role, y in (("colour", y_side), ("shape", y_side), ("colour", y_first)):
            x = np.stack(feats[(role, layer)])
            clf = LogisticRegression(max_iter=2000).fit(x[:cut], y[:cut])
            scores.append(clf.score(x[cut:], y[cut:]))
        name = f"{layer} (embeddings)" if layer == 0 else f"{layer} (last)" if layer == layers[-1] else str(layer)
        print(f"| {name} | " + " | ".join(f"{s:.3f}" for s in scores) + " |")


if __name__ == "__main__":
    main()
