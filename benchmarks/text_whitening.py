"""Experiment: whitened text tokens, to make word order a strong direction instead of a faint one.

MiniLM's middle layers say which side each object of "a red star to the left of a blue circle" sits on
(benchmarks/text_layer_probe.py: 97% linearly readable at layer 3), but as a faint direction: half the gap between
the two sides' mean states is 0.18 where the colours' means spread 7.1 (2.5%), so a model learns the words long
before their order. Whitening the token states over the training captions, x -> (x - mean) W with
W = (C + eps I)^(-1/2) (C their covariance, eps = a fraction of its mean eigenvalue; rescaled to keep the tokens'
overall size), makes that direction 5x stronger relative to the colours (13%) and keeps it readable (99.6%).

The framework option is `model.mmdit.text_whitening: true` (mmflow/text/whitening.py; the model measures and
keeps the statistics). This script is the experiment that came first (runs E14e/E14f): it transforms a
`mmflow prepare` cache's token fields in a copy (training then reads them as usual) and patches the text encoder
when measuring (the empty prompt used for CFG dropout during training stays unwhitened). `adopt` turns a model
trained that way into a text_whitening one with the same statistics, to go on in-tree:

    python benchmarks/text_whitening.py adopt runs/whiten_l3.safetensors RUN/model/models/velocity_ema \
        --cache data/shapes/cache_f4_l3 --out runs/E14e_adopted

    python benchmarks/text_whitening.py fit data/shapes/cache_f4_l3 --out runs/whiten_l3.safetensors
    python benchmarks/text_whitening.py apply data/shapes/cache_f4_l3 data/shapes/cache_f4_l3w \
        --stats runs/whiten_l3.safetensors
    mmflow train recipes/shapes_t2i.yaml ... model.text.encoders.0.layer=3 data.cache=data/shapes/cache_f4_l3w \
        data.use_cache=require train.validate_every=0
    python benchmarks/text_whitening.py word-order runs/whiten_l3.safetensors RUN/checkpoints/step_00001000 \
        --times 0.1 0.3 --items 192
    python benchmarks/text_whitening.py eval runs/whiten_l3.safetensors RUN/checkpoints/step_00001500 --check shapes \
        --metrics "" --prompts two.txt --num 64
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mmflow.text.whitening import Whitening, fit_whitening

sys.path.insert(0, str(Path(__file__).parent))


def token_keys(shard: dict[str, torch.Tensor], key: str) -> list[str]:
    return [k for k in shard if k.endswith(f"text.{key}.tokens")]


def fit(cache: Path, key: str, eps: float, out: Path) -> None:
    """Mean and whitening matrix of every token state in the cache (padding positions included: the cache
    keeps no mask, and a padded position's state is what the encoder gives there)."""
    rows = []
    for f in sorted(cache.glob("shard-*.safetensors")):
        shard = load_file(f)
        rows += [shard[k] for k in token_keys(shard, key)]
    if not rows:
        raise SystemExit(f"{cache}: no 'text.{key}.tokens' fields; is it a `mmflow prepare` cache of that encoder?")
    x = torch.stack(rows).reshape(-1, rows[0].shape[-1])  # (N * S, D)
    w = fit_whitening(x, eps)  # the model option's own fit (mmflow/text/whitening.py), here over every position
    save_file({"mean": w.mean, "matrix": w.matrix}, str(out))
    print(f"{out}: {w.count} token states of width {x.shape[1]}, eps {eps}")


def whiten(tokens: torch.Tensor, stats: dict[str, torch.Tensor]) -> torch.Tensor:
    """(..., D) -> (..., D)."""
    return Whitening(stats["mean"], stats["matrix"], 0).apply(tokens)


def apply(cache: Path, out: Path, stats_path: Path, key: str) -> None:
    """A copy of the cache with its token fields whitened; shard mtimes kept so its index stays fresh."""
    if out.exists():
        raise SystemExit(f"{out} exists; remove it first")
    stats = load_file(str(stats_path))
    shutil.copytree(cache, out)
    for f in sorted(out.glob("shard-*.safetensors")):
        shard = load_file(f)
        for k in token_keys(shard, key):
            shard[k] = whiten(shard[k], stats).contiguous()
        st = f.stat()
        save_file(shard, str(f) + ".tmp")
        os.replace(str(f) + ".tmp", f)
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    print(f"{out}: whitened copy of {cache}")


def patch_encoder(stats_path: Path) -> None:
    """Every TextEncoder whitens its tokens from here on (the models measured were trained on whitened ones)."""
    from mmflow.text import encoder as enc

    stats, forward = load_file(str(stats_path)), enc.TextEncoder.forward

    def whitened(self, prompts):  # type: ignore[no-untyped-def]
        out = forward(self, prompts)
        return enc.TextEmbedding(tokens=whiten(out.tokens, stats), mask=out.mask, pooled=out.pooled)

    enc.TextEncoder.forward = whitened  # type: ignore[method-assign]


def adopt(src: Path, stats_path: Path, cache: Path, key: str, out: Path) -> None:
    """A model trained on a whitened cache as one that whitens its own text tokens (model.mmdit.text_whitening)
    with the same statistics, written as one model folder: `train.init_from` it to go on in-tree (the raw cache;
    the empty prompt of CFG is then whitened too)."""
    from dataclasses import replace

    from mmflow.model_io import load_model, save_model
    from mmflow.models.mmdit import MMDiT
    old = load_model(src)
    model = MMDiT(replace(old.config, text_whitening=True))
    state, _ = model.adapt_init_state(old.state_dict())
    model.load_state_dict(state)
    stats = load_file(str(stats_path))
    count = 0  # the token states fit() measured (max_length per caption, padding included)
    for f in sorted(cache.glob("shard-*.safetensors")):
        shard = load_file(f)
        count += sum(shard[k].shape[0] for k in token_keys(shard, key))
    model.set_text_whitening(Whitening(stats["mean"], stats["matrix"], count))
    save_model(model, out)
    print(f"{out}: {src} reading its own whitened tokens ({count} token states)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit", help="whitening statistics of a cache's token states")
    f.add_argument("cache", type=Path)
    f.add_argument("--out", type=Path, required=True)
    f.add_argument("--eps", type=float, default=0.01, help="added to every eigenvalue, times their mean")
    f.add_argument("--key", default="minilm", help="the text encoder's key in the cache")
    a = sub.add_parser("apply", help="a whitened copy of a cache")
    a.add_argument("cache", type=Path)
    a.add_argument("out", type=Path)
    a.add_argument("--stats", type=Path, required=True)
    a.add_argument("--key", default="minilm")
    w = sub.add_parser("word-order", help="benchmarks/shapes_word_order.py with whitened tokens")
    w.add_argument("stats", type=Path)
    w.add_argument("rest", nargs=argparse.REMAINDER, help="shapes_word_order.py's arguments")
    e = sub.add_parser("eval", help="`mmflow eval` with whitened tokens")
    e.add_argument("stats", type=Path)
    e.add_argument("rest", nargs=argparse.REMAINDER, help="mmflow eval's arguments")
    d = sub.add_parser("adopt", help="a model trained on a whitened cache as a text_whitening model")
    d.add_argument("stats", type=Path)
    d.add_argument("model", type=Path, help="its model folder (e.g. RUN/model/models/velocity_ema)")
    d.add_argument("--cache", type=Path, required=True, help="the cache the statistics were fitted on")
    d.add_argument("--key", default="minilm")
    d.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.cmd == "adopt":
        adopt(args.model, args.stats, args.cache, args.key, args.out)
    elif args.cmd == "fit":
        fit(args.cache, args.key, args.eps, args.out)
    elif args.cmd == "apply":
        apply(args.cache, args.out, args.stats, args.key)
    elif args.cmd == "eval":
        patch_encoder(args.stats)
        from mmflow.cli import main as cli

        raise SystemExit(cli(["eval", *args.rest]))
    else:
        patch_encoder(args.stats)
        import shapes_word_order

        sys.argv = ["shapes_word_order.py", *args.rest]
        shapes_word_order.main()


if __name__ == "__main__":
    main()
