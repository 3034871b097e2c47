"""Quality of a trained shapes_t2v model on the held-out prompts: text-to-video at the trained length and at
twice it, and image-to-video from the real test clips' first frames (recipe run; the sampling time per clip,
at --batch-size, is a by-product: pipeline wall time / clips, text encoding and VAE decode included).

    text-to-video   every test caption (data/shapes_video/test: held-out colour x shape x motion combinations),
                    --per-prompt clips each at the recipe's default sampler and guidance, scored by the exact
                    probe (mmflow/metrics/probes/shapes_video.py): motion, colour, shape, background, all
    2x length       the same at --long-frames (default 17 = 2 x 8 + 1: RoPE over time extrapolates)
    image-to-video  each test clip's first frame as --image with its caption: PSNR of the sample's frame 0
                    against the given frame (and against the frame through the tokenizer alone: the ceiling),
                    and the probe's accuracies of the continued clips
    round trip      the real test clips through the tokenizer alone (encode, decode), scored by the probe: the
                    ceiling a model sampling through this tokenizer can reach
    confusion       for text-to-video (and 2x length), how often each asked motion and shape was read as each
                    other one ("asked -> read": count; "none" where the probe found no object)

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/shapes_t2v_quality.py runs/shapes_t2v --seed 0
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import torch

from mmflow.data.shapes_video import parse_caption
from mmflow.metrics.probes.shapes_video import score_shapes_video
from mmflow.metrics.reconstruction import psnr
from mmflow.modalities import get_modality
from mmflow.pipeline import FlowPipeline
from mmflow.train.lora_training import check_same_latents


def _scores(report: dict) -> dict[str, float]:
    return {k: round(float(v), 3) for k, v in report.items() if k not in ("items", "n")}


def confusion(report: dict, attributes: tuple[str, ...] = ("motion", "shape")) -> dict[str, dict[str, int]]:
    """{attribute: {"asked -> read": count}} over a score_shapes_video report's items, sorted."""
    out: dict[str, Counter] = {a: Counter() for a in attributes}
    for item in report["items"]:
        asked = parse_caption(item["prompt"])
        for a in attributes:
            out[a][f"{getattr(asked, a)} -> {item['pred'][a] or 'none'}"] += 1
    return {a: dict(sorted(c.items())) for a, c in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="run, checkpoint or exported folder of a shapes_t2v model")
    p.add_argument("--test", default="data/shapes_video/test", help="the held-out clips (metadata.jsonl + videos/)")
    p.add_argument("--per-prompt", type=int, default=1)
    p.add_argument("--long-frames", type=int, default=17)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-ema", action="store_true")
    p.add_argument("--tokenizer", default=None,
                   help="decode through this tokenizer folder instead (a decoder-only fine-tune: same latents)")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: t2v, long, i2v, roundtrip")
    args = p.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    pipe = FlowPipeline.from_pretrained(args.model, use_ema=not args.no_ema)
    if args.tokenizer:
        check_same_latents(Path(args.tokenizer), Path(pipe.task.encoders.tokenizer_path))
        pipe.use_tokenizer(Path(args.tokenizer))
    rows = [json.loads(line) for line in (Path(args.test) / "metadata.jsonl").read_text().splitlines() if line.strip()]
    prompts = [r["text"] for r in rows]
    out: dict[str, object] = {"model": str(pipe.source), "tokenizer": str(pipe.task.encoders.tokenizer_path),
                              "prompts": len(prompts), "per_prompt": args.per_prompt, "seed": args.seed,
                              "settings": None}
    asked = [p for p in prompts for _ in range(args.per_prompt)]
    for part, frames in (("t2v", None), ("long", args.long_frames)):
        if part in skip:
            continue
        start = time.perf_counter()
        res = pipe(prompts, num_per_prompt=args.per_prompt, seed=args.seed, num_frames=frames, batch_size=args.batch_size)
        per_clip = (time.perf_counter() - start) / len(asked)  # text encoding, sampling with CFG, VAE decode
        out["settings"] = res.settings
        report = score_shapes_video(res.media, asked)
        out[part if frames is None else f"{part}_{frames}_frames"] = {**_scores(report),
                                                                     "seconds_per_clip": round(per_clip, 3),
                                                                     "confusion": confusion(report)}
        print(part, out, flush=True)
    if not {"roundtrip", "i2v"} <= skip:  # the held-out clips, read once for the parts that need them
        video = get_modality("video")
        real = torch.stack([video.read_whole(Path(args.test) / r["file_name"])[0] for r in rows])  # (N, 3, T, H, W)
    if "roundtrip" not in skip:
        enc, backs = pipe.task.encoders, []
        for i in range(0, len(rows), args.batch_size):
            clips = real[i:i + args.batch_size]  # (B, 3, T, H, W)
            with torch.no_grad():
                backs.append(enc.decode(enc.encode(clips), like_shape=tuple(clips.shape)).clamp(-1, 1))
        report = score_shapes_video(torch.cat(backs), prompts)
        out["roundtrip"] = {**_scores(report), "confusion": confusion(report)}
        print("roundtrip", out["roundtrip"], flush=True)
    if "i2v" not in skip:
        firsts = real[:, :, 0]  # (N, 3, H, W)
        res = pipe(prompts, seed=args.seed, image=list(firsts), batch_size=args.batch_size)
        enc = pipe.task.encoders
        own = enc.decode(enc.encode(firsts.unsqueeze(2)), like_shape=(len(rows), 3, 1, *firsts.shape[2:]))[:, :, 0]
        out["i2v"] = {**_scores(score_shapes_video(res.media, prompts)),
                      "first_frame_psnr": round(float(psnr(res.media[:, :, 0], firsts).mean()), 2),
                      "tokenizer_psnr": round(float(psnr(own, firsts).mean()), 2)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
