"""Training-step speed of MeanFlow's loss (mmflow/flow/meanflow.py) against the usual way of computing it and
against plain flow matching, on one MM-DiT, same batch and weights, in one process.

Three columns, each forward + target + backward of one batch:
- "jvp every row (reference)": the paper's and its public code's way, and mmflow's until 2026-12-07: one
  torch.func.jvp of the network over every row, with gradient, so the backward runs through the JVP's primal
  graph on math attention;
- "mmflow": `meanflow_target` as the trainer calls it: du/dt by a JVP without gradient on the jumping rows
  only (h > 0; the recipes' 25%), the gradient through one plain forward of every row (fused kernels);
- "flow matching": the plain CFM step of the same batch, the floor.
Times are medians of calls interleaved A, B, C, A, ... (load from other jobs falls on all alike); memory is
what autograd keeps for the backward pass (benchmarks/mmdit_step.py's measure; not readable through the
reference's JVP wrappers).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/meanflow_step.py                 # shapes_t2i's MM-DiT, batch 64
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/meanflow_step.py --video         # shapes_t2v's, batch 32
    .venv/bin/python benchmarks/meanflow_step.py --tiny                            # a quick check (seconds)
"""

from __future__ import annotations

import argparse

import torch

from mmdit_step import _saved_for_backward_mib, _time_interleaved  # benchmarks/ is on sys.path as a script
from mmflow.flow.cfg import take_rows
from mmflow.flow.meanflow import meanflow_target
from mmflow.models.attention import plain_kernels
from mmflow.models.mmdit import MMDiT, MMDiTConfig


def _setup(args: argparse.Namespace):
    """(model, z, t, h, v, cond) at the recipe's size: shapes_t2i (16x16x16 latents, patch 2: 64 tokens) or
    shapes_t2v (16x3x16x16, patch [1, 2, 2]: 192 tokens), 16 text tokens of MiniLM's 384 dims."""
    hidden, depth, heads = (64, 2, 2) if args.tiny else (192, 6, 6)
    patch, latent = ((1, 2, 2), (16, 3, 16, 16)) if args.video else ((2, 2), (16, 16, 16))
    cfg = MMDiTConfig(in_channels=16, patch_size=patch, hidden_size=hidden, depth=depth, num_heads=heads,
                      context_dim=384, pooled_dim=384, qk_norm="rms_norm", interval_embed=True)
    torch.manual_seed(0)
    model = MMDiT(cfg).train()
    with torch.no_grad():  # off the zero init, so every path (the interval embedding's too) is live
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    b = args.batch
    z, v = torch.randn(b, *latent, generator=g), torch.randn(b, *latent, generator=g)
    t = torch.rand(b, generator=g)
    jump = torch.arange(b) < round(args.jump_ratio * b)  # (B,): a fixed count, so every call does equal work
    h = torch.where(jump, 0.5 * torch.rand(b, generator=g) * (1 - t), torch.zeros(b))
    cond = {"text": torch.randn(b, 16, 384, generator=g), "text_mask": torch.ones(b, 16, dtype=torch.bool),
            "pooled": torch.randn(b, 384, generator=g)}
    return model, z, t, h, v, cond


def _saved_mib(forward) -> float | None:
    """What autograd keeps for the backward of `forward` (MiB), or None where its saved tensors are
    functorch's dual wrappers, whose storage cannot be read (the reference's JVP with gradient)."""
    try:
        return _saved_for_backward_mib(forward)
    except RuntimeError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", action="store_true", help="shapes_t2v's MM-DiT and latents (default: shapes_t2i's)")
    ap.add_argument("--batch", type=int, default=None, help="rows per step (default: the recipe's, 64 / 32)")
    ap.add_argument("--jump-ratio", type=float, default=0.25, help="share of rows with h > 0 (flow.meanflow.ratio_r_neq_t)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="a small model and batch: checks the script in seconds")
    args = ap.parse_args()
    args.batch = args.batch or (4 if args.tiny else (32 if args.video else 64))
    model, z, t, h, v, cond = _setup(args)
    hb = h.view(-1, *[1] * (z.ndim - 1))  # (B, 1, ...)

    def u_fn(x, t_, h_):
        return model(x, t_, cond, h=h_)

    def rows_fn(rows):
        c = take_rows(cond, rows)
        return lambda x, t_, h_: model.forward(x, t_, c, h=h_)

    def reference_forward():
        ones = torch.ones_like(t)
        with plain_kernels():
            u, du_dt = torch.func.jvp(u_fn, (z, t, h), (v, ones, -ones))
        return (u - (v + hb * du_dt).detach()).pow(2).mean()

    def mmflow_forward():
        out = meanflow_target(u_fn, z, t, h, v, rows_fn)
        return (out.u - out.target).pow(2).mean()

    def fm_forward():
        return (model(z, t, cond, h=torch.zeros_like(h)) - v).pow(2).mean()

    forwards = {"jvp every row (reference)": reference_forward, "mmflow (jvp on jumping rows, no grad)": mmflow_forward,
                "flow matching": fm_forward}
    with torch.no_grad():  # the two MeanFlow losses agree (the same target, the same u up to the kernels)
        ref, ours = reference_forward().item(), mmflow_forward().item()
    assert abs(ref - ours) <= 1e-4 * abs(ref) + 1e-6, (ref, ours)

    def step(forward):
        def run():
            forward().backward()
            model.zero_grad(set_to_none=True)
        return run

    secs = _time_interleaved({k: step(f) for k, f in forwards.items()}, args.repeats, "cpu")
    mib = {k: _saved_mib(f) for k, f in forwards.items()}
    print(f"MM-DiT {'shapes_t2v' if args.video else 'shapes_t2i'} size{' (tiny)' if args.tiny else ''}, batch "
          f"{args.batch}, {int((h > 0).sum())} jumping rows, {torch.get_num_threads()} thread(s), loss {ref:.5f} / {ours:.5f}")
    base = secs["jvp every row (reference)"]
    for k in forwards:
        print(f"  {k:40s} {secs[k]:7.3f} s/step  {args.batch / secs[k]:7.1f} samples/s  x{base / secs[k]:.2f}  "
              f"saved for backward {'n/a (functorch wrappers)' if mib[k] is None else f'{mib[k]:.1f} MiB'}")


if __name__ == "__main__":
    main()
