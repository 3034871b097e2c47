"""Training-step speed of mmflow's MM-DiT vs diffusers' SD3Transformer2DModel, same config and weights.

A random diffusers SD3 transformer is built, converted to mmflow (the converter's parity is tested to
~1e-6), and both run forward + backward on the same batch; samples/s (median of repeats) and the peak
memory of the step are reported side by side.

    .venv/bin/python benchmarks/mmdit_step.py                        # CPU, two small sizes
    .venv/bin/python benchmarks/mmdit_step.py --device cuda --dtype bfloat16 --sizes B L
Memory: on GPU the peak CUDA allocation of one step above what was allocated before it (weights), on CPU
the tensors autograd saves for the backward pass of one forward (deterministic; resident-memory readings
were blurred by the allocator by tens of MiB between runs).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers.utils import logging as diffusers_logging

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


def _step_fn(which: str, model, x, text, pooled, t):
    forward = _forward_fn(which, model, x, text, pooled, t)
    return lambda: forward().float().square().mean().backward()


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
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, device {args.device}, dtype {args.dtype}, threads {torch.get_num_threads()}, "
          f"batch {args.batch}, median of {args.repeats} forward+backward steps, the two models alternating")
    print(f"{'size':6} {'tokens':>7} {'mmflow samples/s':>17} {'diffusers samples/s':>20} {'speed-up':>9} "
          f"{'mmflow MiB':>11} {'diffusers MiB':>14}   (" + ("peak step allocation" if args.device == "cuda" else "saved for backward") + ")")
    for size in args.sizes:
        ref, ours = _models(size)
        x, text, pooled, t = _batch(size, args.batch, args.device, dtype)
        peak: dict[str, float] = {}
        fns = {}
        for which, model in (("mmflow", ours), ("diffusers", ref)):
            model.to(args.device, dtype).train()
            fns[which] = _step_fn(which, model, x, text, pooled, t)
        # gradients accumulate across repeats in both models alike; set_to_none would add an allocation
        secs = _time_interleaved(fns, args.repeats, args.device)
        result = {k: args.batch / v for k, v in secs.items()}
        if args.device == "cuda":
            for which, model in (("mmflow", ours), ("diffusers", ref)):
                others = ref if which == "mmflow" else ours
                others.zero_grad(set_to_none=True)
                model.zero_grad(set_to_none=True)
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                fns[which]()
                torch.cuda.synchronize()
                peak[which] = (torch.cuda.max_memory_allocated() - base) / 2**20
        if args.device != "cuda":
            for which, model in (("mmflow", ours), ("diffusers", ref)):
                peak[which] = _saved_for_backward_mib(_forward_fn(which, model, x, text, pooled, t))
        tokens = (SIZES[size][3] // 2) ** 2 + SIZES[size][4]
        print(f"{size:6} {tokens:7d} {result['mmflow']:17.2f} {result['diffusers']:20.2f} "
              f"{result['mmflow'] / result['diffusers']:8.2f}x {peak['mmflow']:11.1f} {peak['diffusers']:14.1f}")


if __name__ == "__main__":
    main()
