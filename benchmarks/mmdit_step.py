"""Training-step speed of mmflow's MM-DiT vs diffusers' SD3Transformer2DModel, same config and weights.

A random diffusers SD3 transformer is built, converted to mmflow (the converter's parity is tested to
~1e-6), and both run forward + backward on the same batch; samples/s (median of repeats) and the peak
memory of the step are reported side by side. A third column runs a copy of the mmflow model compiled as
`train.compile` does (mmflow/models/compile.py: torch.compile, inductor; its compile is the warm-up, untimed);
--no-compile leaves it out.

    .venv/bin/python benchmarks/mmdit_step.py                        # CPU, two small sizes
    .venv/bin/python benchmarks/mmdit_step.py --device cuda --dtype bfloat16 --sizes B L --peak-tflops 989
    .venv/bin/python benchmarks/mmdit_step.py --sizes S --autocast   # float32 weights under bf16 autocast
    .venv/bin/python benchmarks/mmdit_step.py --tiny                 # a quick check of this script (seconds)
--peak-tflops P adds model FLOPs utilisation, achieved model FLOP/s over P TFLOP/s (the chip's dense peak
in the dtype: H100/H200 bf16 989). Model FLOPs of one training sample (forward + backward = 3 forwards):
    6 * (P_x * N_x + P_c * N_c)  +  12 * depth * N^2 * D
with N_x latent tokens, N_c text tokens, N = N_x + N_c (joint attention), D the hidden width, P_x and P_c the
parameters of the MM-DiT blocks' latent (x_*) and text (c_*) streams without the adaLN modulation (each weight
acts once per token of its own stream: 2 FLOPs forward, 4 backward; the modulation acts once per sample); the
second term is attention's two N x N x D matrix products (QK^T and AV), 2 FLOPs each, times 3 for the
backward. Embedders and the final layer (<2% of the parameters at B) are left out, as is recomputation.
Memory: on GPU the peak CUDA allocation during one step (torch.cuda.max_memory_allocated: the model's weights,
gradients and activations; the other models' weights, also on the GPU, subtracted), on CPU
the tensors autograd saves for the backward pass of one forward (deterministic; resident-memory readings
were blurred by the allocator by tens of MiB between runs).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from diffusers.utils import logging as diffusers_logging

from mmflow.models.compile import compile_module

diffusers_logging.set_verbosity_error()  # its "keep in float32" note on .to() is about fp16 casts

SIZES = {  # name: (hidden, depth, heads, latent side, text tokens)
    "tiny": (128, 2, 4, 16, 16),
    "small": (256, 4, 4, 32, 32),
    "S": (384, 12, 6, 32, 77),
    "B": (768, 12, 12, 64, 77),
    "L": (1024, 24, 16, 64, 154),
}


def _models(size: str, seed: int = 0):
    from diffusers import SD3Transformer2DModel

    from mmflow.interop.diffusers_sd3 import convert_sd3_state_dict
    from mmflow.models.mmdit import MMDiT

    hidden, depth, heads, side, _ = SIZES[size]
    torch.manual_seed(seed)
    ref = SD3Transformer2DModel(sample_size=side, patch_size=2, in_channels=16, num_layers=depth,
                                attention_head_dim=hidden // heads, num_attention_heads=heads,
                                joint_attention_dim=256, caption_projection_dim=hidden,
                                pooled_projection_dim=128, out_channels=16, pos_embed_max_size=side)
    cfg, state = convert_sd3_state_dict(ref.state_dict(), dict(ref.config))
    ours = MMDiT(cfg)
    ours.load_state_dict(state)
    return ref, ours


def _batch(size: str, batch: int, device: str, dtype: torch.dtype):
    _, _, _, side, tokens = SIZES[size]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 16, side // 2 * 2, side // 2 * 2, generator=g)
    text = torch.randn(batch, tokens, 256, generator=g)
    pooled = torch.randn(batch, 128, generator=g)
    t = torch.rand(batch, generator=g)
    return [v.to(device, dtype if v.is_floating_point() and v is not t else v.dtype) for v in (x, text, pooled)] + [t.to(device)]


def _forward_fn(which: str, model, x, text, pooled, t):
    if which == "mmflow":
        return lambda: model(x, t, {"text": text, "pooled": pooled})
    ts = (1 - t) * 1000
    return lambda: model(hidden_states=x, encoder_hidden_states=text, pooled_projections=pooled, timestep=ts).sample


def _step_fn(which: str, model, x, text, pooled, t, autocast: torch.dtype | None = None):
    forward = _forward_fn(which, model, x, text, pooled, t)
    if autocast is None:
        return lambda: forward().float().square().mean().backward()

    def step():  # float32 weights, matmuls in `autocast`: train.mixed_precision's step (backward outside it)
        with torch.autocast(x.device.type, dtype=autocast):
            loss = forward().float().square().mean()
        loss.backward()
    return step


def train_flops_per_sample(model, size: str) -> float:
    """Model FLOPs of one training sample (forward + backward) of mmflow MM-DiT `model` at `size`: the formula
    in the module docstring. Each stream's weights act on its own tokens (x_* on the latent patches, c_* on the
    text tokens); the adaLN modulation layers act once per sample (on the pooled condition), about nothing."""
    hidden, depth, _, side, text = SIZES[size]
    latent = (side // 2) ** 2
    n = latent + text
    per_token = {"x_": latent, "c_": text}
    weight_token_products = 0
    for name, p in model.blocks.named_parameters():
        leaf = name.split(".")[1]  # blocks.<i>.<leaf>...: "0.x_qkv.weight" -> "x_qkv"
        if "modulation" not in leaf:
            weight_token_products += p.numel() * per_token[leaf[:2]]
    return 6.0 * weight_token_products + 12.0 * depth * n * n * hidden


def _time_interleaved(fns: dict, repeats: int, device: str) -> dict[str, float]:
    """Median seconds per call of each fn, calls alternating A, B, A, B, ... so that load from other jobs
    on the machine falls on both alike (the ratio is what we report)."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _saved_for_backward_mib(fn_forward) -> float:
    """MiB of distinct tensor storages autograd keeps for the backward pass of one forward.

    Deterministic (unlike resident memory, which the allocator blurs), and on CPU the activations kept for
    backward are what grows with batch and sequence length; weights and gradients are the same for both.
    """
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        storages[s.data_ptr()] = max(storages.get(s.data_ptr(), 0), s.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn_forward()
    del out
    return sum(storages.values()) / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=sorted(SIZES))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--autocast", action="store_true",
                   help="float32 weights under bf16 autocast, as recipes train with train.mixed_precision: bf16")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="leave out the compiled column")
    p.add_argument("--peak-tflops", type=float, default=None, help="the chip's dense peak: adds the MFU columns")
    p.add_argument("--tiny", action="store_true", help="size tiny, batch 2, 2 repeats: checks the script runs")
    args = p.parse_args()
    if args.tiny:
        args.sizes, args.batch, args.repeats = ["tiny"], 2, 2
    dtype = getattr(torch, args.dtype)
    cuda = args.device.startswith("cuda")
    columns = ["mmflow", *(["compiled"] if args.compile else []), "diffusers"]
    print(f"torch {torch.__version__}, device {args.device}, dtype {args.dtype}"
          f"{' under bf16 autocast' if args.autocast else ''}, threads {torch.get_num_threads()}, "
          f"batch {args.batch}, median of {args.repeats} forward+backward steps, the models alternating; "
          f"compiled = mmflow under torch.compile (inductor)")
    memory = ("MiB peak of a step (torch.cuda.max_memory_allocated less the other models' weights)" if cuda
              else "MiB saved for backward")
    print(f"{'size':6} {'tokens':>7} " + " ".join(f"{c + ' samples/s':>20}" for c in columns)
          + " " + " ".join(f"{c + ' / diffusers':>22}" for c in columns[:-1])
          + "   " + memory + ": " + " / ".join(columns)
          + ("   MFU: " + " / ".join(columns) if args.peak_tflops else ""))
    for size in args.sizes:
        ref, ours = _models(size)
        models = {"mmflow": ours, **({"compiled": copy.deepcopy(ours)} if args.compile else {}), "diffusers": ref}
        if args.compile:
            compile_module(models["compiled"], backend="inductor")
        x, text, pooled, t = _batch(size, args.batch, args.device, dtype)
        peak: dict[str, float | None] = {}
        fns = {}
        for which, model in models.items():
            model.to(args.device, dtype).train()
            fns[which] = _step_fn("diffusers" if which == "diffusers" else "mmflow", model, x, text, pooled, t,
                                  torch.bfloat16 if args.autocast else None)
        # gradients accumulate across repeats in every model alike; set_to_none would add an allocation
        secs = _time_interleaved(fns, args.repeats, args.device)
        result = {k: args.batch / v for k, v in secs.items()}
        for which, model in models.items():
            if cuda:  # the step's peak (its weights, gradients, activations), less the other models' weights
                for m in models.values():
                    m.zero_grad(set_to_none=True)
                others = sum(p.numel() * p.element_size() for name, m in models.items() if name != which
                             for p in m.parameters())
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                fns[which]()
                torch.cuda.synchronize()
                peak[which] = (torch.cuda.max_memory_allocated() - others) / 2**20
            else:
                kind = "diffusers" if which == "diffusers" else "mmflow"
                try:  # a compiled graph may not expose what it saves to the hooks (then: n/a)
                    with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.autocast):
                        peak[which] = _saved_for_backward_mib(_forward_fn(kind, model, x, text, pooled, t))
                except Exception:  # noqa: BLE001  (a benchmark column, not a result to stop for)
                    peak[which] = None
        tokens = (SIZES[size][3] // 2) ** 2 + SIZES[size][4]
        line = (f"{size:6} {tokens:7d} " + " ".join(f"{result[c]:20.2f}" for c in columns) + " "
                + " ".join(f"{result[c] / result['diffusers']:21.2f}x" for c in columns[:-1]) + "   "
                + " / ".join("n/a" if peak[c] is None else f"{peak[c]:.1f}" for c in columns))
        if args.peak_tflops:
            flops = train_flops_per_sample(ours, size)
            line += "   " + " / ".join(f"{100 * result[c] * flops / (args.peak_tflops * 1e12):.1f}%" for c in columns)
            line += f"  ({flops / 1e9:.1f} GFLOP per sample)"
        print(line, flush=True)


if __name__ == "__main__":
    main()
