"""Command line: `mmflow train RECIPE [key=value ...]` and `mmflow sample PATH [key=value ...]`.

Settings live in the recipe; the command line only overrides them with dotted keys (train.lr=3e-4),
so there is one name for every knob. Also runs under `accelerate launch -m mmflow train ...`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from mmflow.config import ConfigError, to_dict
from mmflow.errors import UserError

TRAIN_EPILOG = """\
examples:
  mmflow train recipes/toy2d.yaml
  mmflow train recipes/toy2d.yaml train.max_steps=500 data.dataset=two_moons
  mmflow train recipes/toy2d.yaml --resume                     # continue from the newest good checkpoint
  mmflow train recipes/toy2d.yaml --overfit-batch 1            # debugging: one fixed sample
  mmflow train recipes/image_t2i_sd3_2b.yaml --dry-run --accelerate-config recipes/accelerate/multi_gpu_8gpu.yaml
  accelerate launch --multi_gpu --num_processes 2 -m mmflow train recipes/toy2d.yaml
"""

SAMPLE_EPILOG = """\
PATH is a run folder (its model/ export), a checkpoint folder (runs/x/checkpoints/step_N) or an
exported model folder (anything holding pipeline.json). Overrides set the recipe's sample section
(num_samples = samples per prompt or label). Each sample is one file (PNG / MP4 / WAV; points:
samples.safetensors) carrying its prompt, seed, settings and the model's fingerprint, plus a preview
samples.png and an index samples.json. Sample i uses seed+i: the same command gives the same files.
  mmflow sample runs/emoji_image --prompt "a red heart" --prompt "a cat face" num_samples=4 guidance=4
  mmflow sample runs/emoji_video --prompt-file prompts.txt --num-frames 8 --batch-size 4
  mmflow sample runs/music --prompt "a slow piano melody" --seconds 8 --negative-prompt "noise"
  mmflow sample runs/digits_image num_samples=16 --label 7 --label 3
  mmflow sample runs/toy2d steps=32 solver=rk4 guidance=3.0 num_samples=2000 --label 3
  mmflow sample runs/base --lora runs/style --lora runs/subject:0.6 --prompt "a red heart"   # LoRA adapters
"""

LORA_EPILOG = """\
A LoRA run (train.lora + train.init_from) saves adapters only; `mmflow sample MODEL --lora ADAPTER[:SCALE]`
applies them, and merge folds one into a full model folder (the layout of an export).
  mmflow lora merge runs/base runs/style models/base_style --scale 0.8
"""


CONVERT_EPILOG = """\
formats:
  diffusers-sd3   a diffusers SD3Transformer2DModel folder (SD3 / SD3.5: config.json +
                  diffusion_pytorch_model.safetensors, sharded or not; a pipeline folder's transformer/
                  also works) -> an mmflow MM-DiT folder (config.json + model.safetensors). The output
                  follows mmflow's conventions: t = 0 noise, t = 1 data, and it predicts the velocity.
  diffusers-vae   a diffusers AutoencoderKL folder (SD3/Flux 16-channel or SD1/SDXL 4-channel; a
                  pipeline folder's vae/ also works) -> an mmflow image tokenizer folder. diffusers'
                  scaling_factor / shift_factor become the tokenizer's per-channel latent statistics.
  diffusers-sd3-pipeline  a whole diffusers StableDiffusion3Pipeline folder (model_index.json, transformer/,
                  vae/, text_encoder*/ (CLIP-L, CLIP-G, T5), tokenizer*/, scheduler/) -> a self-contained
                  mmflow pipeline folder (pipeline.json + models/) that `mmflow sample` loads and that
                  samples as diffusers does (SD3's text conditioning, CFG with the empty prompt, scheduler).
examples:
  mmflow convert diffusers-sd3 stable-diffusion-3.5-medium/transformer models/sd35m
  mmflow convert diffusers-vae stable-diffusion-3.5-medium/vae tokenizers/sd35m-vae
  mmflow convert diffusers-sd3-pipeline stable-diffusion-3.5-medium models/sd35m-pipeline
  mmflow convert diffusers-sd3 sd3-medium models/sd3m --dtype bfloat16 --max-shard-gb 2
"""


EVAL_EPILOG = """\
metrics: fd, precision_recall, density_coverage (need --real), clip_score (needs prompts and --clip:
a local CLIP folder, CLAP for audio), aesthetic (images; --clip of CLIP ViT-L/14 and --aesthetic).
features: auto (weight-free: image pixels, video per-frame pixels + motion, audio mel) or a name:
  inception (--features-path pt_inception-2015-12-05-6726825d.pth: FID), clip (--features-path a CLIP
  folder), video_frames, i3d (FVD's TorchScript file), mel, clap, audio_torchscript, probe:<name>.
examples:
  mmflow eval --real ../shared/data/emoji64 --fake runs/emoji_image/samples --metrics fd,precision_recall
  mmflow eval runs/emoji_image --num 500 --real ../shared/data/emoji64 --metrics fd,density_coverage
  mmflow eval runs/emoji_image --prompts prompts.txt --num 200 --metrics clip_score --clip weights/clip-b32
  accelerate launch --multi_gpu --num_processes 2 -m mmflow eval runs/emoji_image --num 1000 --real data/
"""


def _positive(kind: type) -> Callable[[str], float]:
    """argparse type: a finite number > 0 (argparse turns the ValueError into a one-line usage error)."""

    def parse(text: str) -> float:
        value = kind(text)
        if not math.isfinite(value) or value <= 0:
            raise ValueError(text)
        return value

    parse.__name__ = f"positive {kind.__name__}"  # argparse names the type in its message
    return parse


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmflow", description="Flow-matching generation for images, video and audio.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a recipe", epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("recipe", help="recipe YAML file (see recipes/)")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-4 sample.steps=16")
    t.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint of the run")
    t.add_argument("--overfit-batch", type=_positive(int), metavar="N", default=None,
                   help="debug: draw every batch from the same N examples (N=1: one sample), fresh noise each step")
    t.add_argument("--run-dir", default=None, help="run folder (default: the recipe's run_dir or runs/<name>)")
    t.add_argument("--print-config", action="store_true", help="print the validated recipe and exit")
    t.add_argument("--dry-run", action="store_true", help="build the models on the meta device and print parameters, "
                   "tokens per step and per-GPU memory; reads no data, writes nothing (mmflow/train/dry_run.py)")
    t.add_argument("--accelerate-config", default=None, metavar="FILE", help="--dry-run: the distribution of this "
                   "`accelerate launch --config_file` (e.g. recipes/accelerate/multi_gpu_8gpu.yaml)")
    t.add_argument("--num-gpus", type=_positive(int), default=None, metavar="N",
                   help="--dry-run: N GPUs (DDP; sharded where the recipe has train.sharding: fsdp2)")
    t.add_argument("--fsdp", action="store_true", help="--dry-run: FSDP FULL_SHARD over the --num-gpus")
    t.add_argument("--assume", action="append", default=None, metavar="KEY=NAME", help="--dry-run: a missing text "
                   "encoder (its key) or tokenizer ('tokenizer') is this known model (mmflow/train/known_models.py)")
    s = sub.add_parser("sample", help="sample from a trained model", epilog=SAMPLE_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("path", help="run folder, checkpoint folder or exported model folder")
    s.add_argument("overrides", nargs="*", help="sample settings, e.g. steps=16 solver=rk4 guidance=3 num_samples=1000")
    s.add_argument("--out", default=None, help="output folder (default: <path>/samples)")
    s.add_argument("--prompt", action="append", dest="prompts", default=None, metavar="TEXT",
                   help="text prompt (text-conditional models); repeat for several, num_samples each")
    s.add_argument("--prompt-file", default=None, metavar="FILE", help="a UTF-8 file of prompts, one per line")
    s.add_argument("--label", action="append", dest="labels", type=int, default=None,
                   help="class label (class-conditional models; digits: the digit); repeat for several")
    s.add_argument("--negative-prompt", default=None, metavar="TEXT", help="what CFG steers away from")
    s.add_argument("--image", action="append", dest="images", default=None, metavar="FILE",
                   help="image-to-video: the clips' first frame (one for all prompts, or one per --prompt, in order); "
                        "video models trained with model.first_frame > 0")
    s.add_argument("--size", type=_positive(int), default=None, help="image / video side (default: the training size)")
    s.add_argument("--num-frames", type=_positive(int), default=None, help="video frames (default: the training length)")
    s.add_argument("--seconds", type=_positive(float), default=None, help="audio length (default: the training length)")
    s.add_argument("--batch-size", type=_positive(int), default=None,
                   help="samples solved together (bounds memory; default 16 for media, all for points)")
    s.add_argument("--text-encoder", action="append", dest="text_encoders", default=None, metavar="NAME=PATH",
                   help="folder of a text encoder the model references by path (see pipeline.json components)")
    s.add_argument("--overwrite", action="store_true", help="replace samples already in the output folder")
    s.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (checked before loading)")
    s.add_argument("--lora", action="append", dest="loras", default=None, metavar="ADAPTER[:SCALE]",
                   help="a LoRA adapter folder or LoRA run, its update times SCALE (default 1); repeat to compose")
    s.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the velocity model (and an image / audio tokenizer's decoder) on its first call, "
                        "which then takes tens of seconds or more; default: on for an MM-DiT on CUDA, else off")
    lo = sub.add_parser("lora", help="LoRA adapters: merge one into a full model", epilog=LORA_EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    lo_sub = lo.add_subparsers(dest="lora_command", required=True)
    lm = lo_sub.add_parser("merge", help="fold an adapter into a full model folder (written atomically)")
    lm.add_argument("model", help="the base: run folder, checkpoint folder or exported model folder")
    lm.add_argument("adapter", help="adapter folder, or a LoRA run / checkpoint / export")
    lm.add_argument("out", help="output model folder")
    lm.add_argument("--scale", type=float, default=1.0, help="weight of the adapter's update (default 1)")
    lm.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    pr = sub.add_parser("prepare", help="cache a media recipe's latents and text embeddings",
                        description="Encode every item of the recipe's media folder with its tokenizer and text "
                                    "encoders into the cache (data.cache, default <run folder>/cache). Training "
                                    "reads it when it is fresh. Also runs under accelerate launch (data-parallel).")
    pr.add_argument("recipe", help="recipe YAML file (task text_to_media)")
    pr.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.path=my_folder")
    pr.add_argument("--batch-size", type=_positive(int), default=16, help="items encoded together")
    for verb, what, src_help in (("encode", "media files -> latent files (<stem>.safetensors)", "media files or folders"),
                                 ("decode", "latent files -> media files (PNG / MP4 / WAV)", "latent files or folders")):
        e = sub.add_parser(verb, help=f"run a tokenizer: {what}")
        e.add_argument("tokenizer", help="tokenizer folder (config.json + model.safetensors), or a tokenizer run folder")
        e.add_argument("inputs", nargs="+", help=src_help)
        e.add_argument("--out", required=True, help="output folder")
        e.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (checked before loading)")
        e.add_argument("--no-ema", action="store_true", help="a run folder: use the raw weights instead of the EMA")
    ev = sub.add_parser("eval", help="score generated media against real media (FD, precision/recall, CLIP score...)",
                        epilog=EVAL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument("model", nargs="?", default=None,
                    help="a model to sample and score (run / checkpoint / export folder); omit with --fake")
    ev.add_argument("overrides", nargs="*", help="sample settings for a model, e.g. steps=16 guidance=4")
    ev.add_argument("--fake", default=None, help="folder of generated media (e.g. mmflow sample's output)")
    ev.add_argument("--real", default=None, help="folder of real media (an imagefolder with metadata.jsonl, ...)")
    ev.add_argument("--metrics", default="fd", help="comma-separated: fd,precision_recall,density_coverage,clip_score,aesthetic")
    ev.add_argument("--features", default="auto", help="feature extractor name (see below)")
    ev.add_argument("--features-path", default=None, help="the extractor's local weights file or folder")
    ev.add_argument("--clip", default=None, help="local CLIP folder (CLAP for audio): clip_score, aesthetic")
    ev.add_argument("--aesthetic", default=None, help="aesthetic head weights file")
    ev.add_argument("--check", default=None, help="a prompt check scoring each item against its prompt: shapes")
    ev.add_argument("--modality", default=None, choices=["image", "video", "audio"], help="when a folder holds several")
    ev.add_argument("--prompts", default=None, metavar="FILE", help="a model: prompts to sample (one per line), cycled")
    ev.add_argument("--num", type=_positive(int), default=256, help="a model: samples to draw")
    ev.add_argument("--batch-size", type=_positive(int), default=32, help="items per sampling / feature batch")
    ev.add_argument("--out", default=None, help="JSON report (default: <fake>/eval.json or <model>/eval.json)")
    ev.add_argument("--cache", default=None, help="folder caching real-side features (default ~/.cache/mmflow/eval)")
    ev.add_argument("--no-cache", action="store_true", help="recompute the real side's features")
    ev.add_argument("--text-encoder", action="append", dest="text_encoders", default=None, metavar="NAME=PATH",
                    help="a model's referenced text encoder folder")
    ev.add_argument("--no-ema", action="store_true", help="a model: the raw weights instead of the EMA")
    ev.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when there is one)")
    c = sub.add_parser("convert", help="convert other frameworks' weights into an mmflow model folder",
                       epilog=CONVERT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("format", choices=["diffusers-sd3", "diffusers-vae", "diffusers-sd3-pipeline"], help="source format")
    c.add_argument("src", help="source folder")
    c.add_argument("dst", help="output mmflow model folder (written atomically)")
    c.add_argument("--dtype", choices=["keep", "float32", "bfloat16", "float16"], default="keep",
                   help="weight dtype of the output (default: the checkpoint's)")
    c.add_argument("--max-shard-gb", type=_positive(float), default=5.0, help="split model.safetensors into shards of this size")
    x = sub.add_parser("export", help="write a run's model as a self-contained folder to share or ship",
                       description="Load a run, checkpoint or model folder as `mmflow sample` does and write it as one "
                                   "folder (models/ + pipeline.json, the tokenizer inside): what checkpoints/ ships.")
    x.add_argument("path", help="run folder, checkpoint folder or exported model folder")
    x.add_argument("out", help="output folder (written atomically)")
    x.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="stored dtype of the trained weights (float16 halves the bytes; loading casts back)")
    x.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA")
    x.add_argument("--text-encoder", action="append", dest="text_encoders", default=None, metavar="NAME=PATH",
                   help="folder of a text encoder the model references by path")
    x.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    return p


def _train(args: argparse.Namespace) -> int:
    from mmflow.recipe import check_before_work
    from mmflow.tasks import get_task_class, load_recipe
    from mmflow.train.checkpoint import step_dir_name
    from mmflow.train.task import format_metric
    from mmflow.train.trainer import Trainer, check_run_folder, make_accelerator

    if args.dry_run:  # before load_recipe: it would refuse the text encoder folders missing here
        from mmflow.train.dry_run import run_dry

        return run_dry(args)
    dry_only = [flag for flag, given in (("--accelerate-config", args.accelerate_config), ("--num-gpus", args.num_gpus),
                                         ("--fsdp", args.fsdp), ("--assume", args.assume)) if given]
    if dry_only:  # a training run takes its distribution from `accelerate launch`, not from these
        raise ConfigError(f"{', '.join(dry_only)} only apply with --dry-run (a real run is distributed by "
                          "`accelerate launch --config_file ...`)", "train")
    overrides = list(args.overrides)
    recipe = load_recipe(args.recipe, overrides)
    if args.print_config:
        print(json.dumps(to_dict(recipe), indent=2))
        return 0
    run_dir = check_before_work(recipe, args.recipe, overrides, run_dir=args.run_dir)  # inputs exist, folder is safe
    check_run_folder(run_dir, args.resume)  # --resume needs a checkpoint, a fresh start none: before any work
    accelerator = make_accelerator(recipe.train, run_dir)
    task = get_task_class(recipe.task)(recipe)
    result = Trainer(recipe, task, run_dir, resume=args.resume, overfit_batch=args.overfit_batch or 0,
                     accelerator=accelerator).train()
    if accelerator.is_main_process:
        print(f"run folder: {result.run_dir}   final loss: {format_metric(result.final_loss, '.5f')}")
        for line in task.summary_lines(result.metrics, result.run_dir):
            print(line)
        final = result.run_dir / "validation" / step_dir_name(result.step)
        pictures = sorted(final.glob("*.png")) if final.is_dir() else []
        print("pictures: " + ("  ".join(str(p) for p in pictures) if pictures else str(result.run_dir / "validation")))
    if accelerator.num_processes > 1:
        _exit_now(0)
    return 0


def _exit_now(code: int) -> None:
    """End a finished multi-process run without the interpreter's finalization: its results are written and
    the process group is down, and the threads other libraries leave behind (gloo, OpenMP, tqdm) have been
    seen to stall a rank's exit, which leaves `accelerate launch` waiting forever."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def _sample(args: argparse.Namespace) -> int:
    from mmflow.pipeline import FlowPipeline, parse_device

    device = parse_device(args.device)  # before loading anything
    prompts = list(args.prompts or []) + _prompt_file(args.prompt_file)
    encoders = dict(_pair(p, "--text-encoder") for p in args.text_encoders or [])
    pipe = FlowPipeline.from_pretrained(args.path, use_ema=not args.no_ema, device=device, text_encoders=encoders,
                                        compile="auto" if args.compile is None else args.compile)
    print(f"[mmflow] {pipe.compile_note}", file=sys.stderr)
    for text in args.loras or []:
        pipe.load_lora(*_adapter_scale(text))
    cfg = pipe.sample_config(args.overrides)
    out_dir = Path(args.out) if args.out else Path(args.path) / "samples"
    out = pipe(prompts or None, labels=args.labels, num_per_prompt=cfg.num_samples, sample_config=cfg,
               negative_prompt=args.negative_prompt, size=args.size, num_frames=args.num_frames, seconds=args.seconds,
               batch_size=args.batch_size, image=args.images, progress=True)
    files = pipe.save(out, out_dir, overwrite=args.overwrite)
    inputs = list(dict.fromkeys(out.inputs))
    print(json.dumps({"model": str(pipe.source), "out_dir": str(out_dir), "media": out.layout.describe(),
                      "samples": len(out.media), "num_per_prompt": out.num_per_prompt,
                      "inputs": inputs if len(inputs) <= 20 else inputs[:20] + ["..."], "nfe": out.nfe,
                      "files": [str(f) for f in files[:3]] + (["..."] if len(files) > 5 else []) + [str(f) for f in files[-2:]],
                      **out.report}, indent=2))
    return 0


def _adapter_scale(text: str) -> tuple[str, float]:
    """ADAPTER[:SCALE] of --lora: (folder, scale), the scale 1 when the text ends in no number."""
    path, sep, tail = text.rpartition(":")
    if not sep:
        return text, 1.0
    try:
        scale = float(tail)
    except ValueError:
        return text, 1.0  # a colon inside the path
    if not path or not math.isfinite(scale):
        raise ConfigError(f"--lora {text!r}: expected ADAPTER[:SCALE] with a finite scale")
    return path, scale


def _lora(args: argparse.Namespace) -> int:
    from mmflow.pipeline import FlowPipeline

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ConfigError(f"{out} already exists (--overwrite replaces it)", "lora merge")
    if not math.isfinite(args.scale):
        raise ConfigError(f"--scale {args.scale} is not a finite number", "lora merge")
    pipe = FlowPipeline.from_pretrained(args.model)
    pipe.load_lora(args.adapter, args.scale)
    pipe.save_pretrained(out, overwrite=True)
    print(f"merged {pipe.adapters[-1][0]} (scale {args.scale:g}) into {pipe.source} -> {out}")
    return 0


def _prompt_file(path: str | None, flag: str = "--prompt-file") -> list[str]:
    """The non-empty lines of a UTF-8 prompt file (none without a file)."""
    if path is None:
        return []
    from mmflow.errors import MissingInput

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise MissingInput(f"{flag} {path} does not exist") from None
    except (UnicodeDecodeError, IsADirectoryError) as e:
        raise ConfigError(f"{flag} {path} is not a UTF-8 text file ({type(e).__name__})") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ConfigError(f"{flag} {path} holds no prompt (one per line)")
    return prompts


def _pair(text: str, flag: str) -> tuple[str, str]:
    """NAME=VALUE of a repeatable flag, or ConfigError naming it."""
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise ConfigError(f"{flag} {text!r}: expected NAME=PATH")
    return name, value


def _prepare(args: argparse.Namespace) -> int:
    from mmflow.recipe import check_before_work
    from mmflow.tasks import get_task_class, load_recipe
    from mmflow.tasks.media_cache import prepare_cache
    from mmflow.train.trainer import end_processes, make_accelerator

    recipe = load_recipe(args.recipe, args.overrides)
    run_dir = check_before_work(recipe, args.recipe, args.overrides)  # inputs exist, folder is safe
    task = get_task_class(recipe.task)(recipe)
    if not hasattr(task, "cache_dir"):
        raise ConfigError(f"task {recipe.task!r} has nothing to cache (prepare is for media recipes)", "task", args.recipe)
    accelerator = make_accelerator(recipe.train, run_dir)
    if accelerator.is_main_process:  # data made before it is cached (data.prior's class items)
        task.prepare_data(accelerator.device)
    accelerator.wait_for_everyone()
    for part in task.cache_parts():  # a joint image+video recipe caches its images too
        result = prepare_cache(part, accelerator, batch_size=args.batch_size)
        if accelerator.is_main_process:
            print(f"cache: {result.folder}   {result.cached} items cached, {len(result.skipped)} bad items skipped")
            for path, reason in result.skipped[:20]:
                print(f"  skipped {path}: {reason}")
    if accelerator.num_processes > 1:  # as a finished training run: down together, then out without finalization
        end_processes(accelerator)
        _exit_now(0)
    return 0


def _encode_decode(args: argparse.Namespace) -> int:
    from mmflow.pipeline import parse_device
    from mmflow.tokenizers.cli_io import decode_files, encode_files

    run = encode_files if args.command == "encode" else decode_files
    device = parse_device(args.device)  # before loading anything
    try:
        written = run(args.tokenizer, args.inputs, args.out, device=device, use_ema=not args.no_ema)
    except ValueError as e:  # a file that does not fit the tokenizer: the message names it
        raise ConfigError(str(e)) from e
    print(f"{args.command}d {len(written)} file(s) into {args.out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from mmflow.config import from_dict
    from mmflow.evaluation.config import EvalConfig
    from mmflow.evaluation.run import default_cache_dir, eval_accelerator, evaluate_folders, evaluate_model, print_report
    from mmflow.pipeline import parse_device
    from mmflow.train.trainer import end_processes

    if (args.model is None) == (args.fake is None):
        raise ConfigError("give a model to sample (mmflow eval MODEL) or a folder of generated media (--fake), "
                          "one of the two", "eval")
    if args.device is not None:
        parse_device(args.device)  # before any work
    cfg = from_dict(EvalConfig, {"metrics": [m.strip() for m in args.metrics.split(",") if m.strip()],
                                 "features": args.features, "features_path": args.features_path, "clip": args.clip,
                                 "aesthetic": args.aesthetic, "batch_size": args.batch_size, "check": args.check},
                    source="command line", prefix="eval")
    cache = None if args.no_cache else (args.cache or default_cache_dir())
    if args.fake is not None:
        if args.overrides:
            raise ConfigError(f"sample settings {args.overrides} apply to a model, not to --fake", "eval")
        result = evaluate_folders(args.real, args.fake, cfg, args.out, args.modality, cache, args.device or "cpu")
    else:
        encoders = dict(_pair(p, "--text-encoder") for p in args.text_encoders or [])
        acc = eval_accelerator(args.device)
        result = evaluate_model(args.model, cfg, args.out, _prompt_file(args.prompts, "--prompts"), args.num, args.real, cache,
                                args.device, args.overrides, encoders, use_ema=not args.no_ema, accelerator=acc)
        if acc.num_processes > 1:  # the others waited for the main process's scoring: down together, then out
            print_report(result)
            end_processes(acc)
            _exit_now(0)
    print_report(result)
    return 0


def _convert(args: argparse.Namespace) -> int:
    import torch

    from mmflow.interop import load_diffusers_sd3, load_diffusers_vae
    from mmflow.model_io import save_model

    dtype = None if args.dtype == "keep" else getattr(torch, args.dtype)
    if args.format == "diffusers-sd3-pipeline":
        return _convert_pipeline(args, dtype)
    loader = {"diffusers-sd3": load_diffusers_sd3, "diffusers-vae": load_diffusers_vae}[args.format]
    try:
        model = loader(args.src, dtype=dtype)
    except ValueError as e:  # keys or config that do not fit: the message names them
        raise ConfigError(str(e), source=args.src) from e
    out = save_model(model, args.dst, max_shard_bytes=int(args.max_shard_gb * 1024**3))
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out} ({model.model_type}, {n / 1e6:.1f}M parameters, {args.format} weights from {args.src})")
    return 0


def _convert_pipeline(args: argparse.Namespace, dtype: object) -> int:
    from mmflow.interop.diffusers_sd3_pipeline import convert_diffusers_sd3_pipeline

    try:
        out = convert_diffusers_sd3_pipeline(args.src, args.dst, dtype=dtype,
                                             max_shard_bytes=int(args.max_shard_gb * 1024**3))
    except ValueError as e:  # keys or config that do not fit: the message names them
        if isinstance(e, UserError):
            raise
        raise ConfigError(str(e), source=args.src) from e
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} (an mmflow pipeline, {size / 2**20:.1f} MiB, from the {args.format} folder {args.src}); "
          f"sample it with: mmflow sample {out} --prompt \"...\"")
    return 0


def _export(args: argparse.Namespace) -> int:
    import torch

    from mmflow.pipeline import FlowPipeline

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ConfigError(f"{out} already exists (--overwrite replaces it)", "export")
    encoders = dict(_pair(p, "--text-encoder") for p in args.text_encoders or [])
    pipe = FlowPipeline.from_pretrained(args.path, use_ema=not args.no_ema, text_encoders=encoders or None)
    pipe.save_pretrained(out, dtype=getattr(torch, args.dtype), overwrite=True)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"exported {pipe.source} -> {out} ({size / 2**20:.1f} MiB, weights {args.dtype})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    # key=value overrides may come after options too (`sample run --prompt "a" steps=16`): argparse
    # takes only the first run of positionals, so later ones come back as extras and are added here
    args, extras = parser.parse_known_args(argv)
    stray = [e for e in extras if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extras:
        args.overrides = list(args.overrides) + extras
    logging.basicConfig(level=logging.WARNING, format="[mmflow] %(levelname)s %(message)s")
    try:
        commands = {"train": _train, "sample": _sample, "prepare": _prepare, "encode": _encode_decode,
                    "decode": _encode_decode, "convert": _convert, "eval": _eval,
                    "export": _export, "lora": _lora}
        return commands[args.command](args)
    except UserError as e:  # expected: one line naming what is at fault; a bug keeps its traceback
        print(f"mmflow {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmflow {args.command}: interrupted (checkpoints already written are intact; --resume continues)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
