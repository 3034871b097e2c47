"""A shipped image or video tokenizer's held-out reconstruction, its weights as stored and rounded through float16.

Shipping weights in float16 halves their size; this checks that it costs nothing. It loads a tokenizer
folder (`load_model` casts float16 storage back to float32), reconstructs the tokenizer recipe's held-out
items with the posterior mean, exactly as training validation does, then rounds every weight through float16
and does it again. Prints PSNR (mean, worst item) and the hue error (degrees, saturated pixels) both ways.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tokenizer_storage_dtype.py checkpoints/tokenizers/image_f8 tokenizers/image_f8.yaml
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tokenizer_storage_dtype.py checkpoints/tokenizers/video tokenizers/video.yaml
"""

from __future__ import annotations

import argparse

import torch

import mmflow.builtin_models  # noqa: F401  (registers the model classes load_model builds)
from mmflow.metrics.reconstruction import hue_error, psnr
from mmflow.model_io import load_model
from mmflow.tasks import load_recipe
from mmflow.tasks.tokenizer import TokenizerTask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a tokenizer folder (config.json + model.safetensors)")
    parser.add_argument("recipe", help="its tokenizer recipe: data.path and data.held_out name the items")
    parser.add_argument("overrides", nargs="*", help="recipe overrides, key=value")
    args = parser.parse_args()
    task = TokenizerTask(load_recipe(args.recipe, args.overrides))
    x = task.held_out_media()  # (N, C, ...)
    vae = load_model(args.folder).eval()
    for label in ("as stored", "rounded through float16"):
        if label != "as stored":
            with torch.no_grad():
                for t in [*vae.parameters(), *vae.buffers()]:
                    if t.is_floating_point():
                        t.copy_(t.half().float())
        with torch.no_grad():
            x_hat = task.reconstruct_mean(vae, x, torch.device("cpu"))
        per_item = psnr(x_hat, x)  # (N,)
        print(f"{args.folder} {label}: {len(x)} held-out items, PSNR {per_item.mean():.3f} dB "
              f"(worst {per_item.min():.3f}), hue error {hue_error(x, x_hat):.3f} deg")


if __name__ == "__main__":
    main()
