"""Sampling-loop speed: mmflow's Euler solver vs diffusers' FlowMatchEulerDiscreteScheduler.

Both integrate the same velocity network over the same grid, so they must give the same samples (the
script checks it); what differs is the loop overhead per step. Also times classifier-free guidance as
one batched forward of 2B rows (what mmflow does) against two forwards of B rows.

    .venv/bin/python benchmarks/sampler_loop.py                   # CPU, defaults
    .venv/bin/python benchmarks/sampler_loop.py --batch 64 --steps 50 --device cuda

diffusers uses sigma = 1 - t and its model output is -velocity; the conversion is in `diffusers_loop`.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from mmflow.models.toy_mlp import MLPVelocity, MLPVelocityConfig
from mmflow.sampling.grids import uniform_grid
from mmflow.sampling.guidance import cfg_velocity
from mmflow.sampling.solvers import ode_solve


def timed(fn, repeats: int, device: str) -> tuple[float, torch.Tensor]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def diffusers_loop(model, x0: torch.Tensor, labels: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler()
    sched.set_timesteps(sigmas=(1.0 - grid[:-1]).tolist(), device=x0.device)
    x = x0
    for t_sched in sched.timesteps:
        sigma = t_sched / sched.config.num_train_timesteps
        t = (1.0 - sigma).expand(x.shape[0]).to(x.dtype)
        x = sched.step(-model(x, t, labels), t_sched, x).prev_sample  # model output = d x / d sigma = -v
    return x


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--hidden", type=int, default=64, help="small on purpose: loop overhead is what is measured")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.manual_seed(0)
    model = MLPVelocity(MLPVelocityConfig(dim=2, hidden=args.hidden, depth=2, num_classes=8)).to(args.device).eval()
    for prm in model.parameters():  # non-zero output layers so the samples move
        prm.data.normal_(0, 0.2)
    x0 = torch.randn(args.batch, 2, device=args.device)
    labels = torch.randint(0, 8, (args.batch,), device=args.device)
    grid = uniform_grid(args.steps, device=args.device)
    fn = lambda x, t: model(x, t, labels)  # noqa: E731
    with torch.no_grad():
        t_mm, x_mm = timed(lambda: ode_solve(fn, x0, grid, "euler").x, args.repeats, args.device)
        t_df, x_df = timed(lambda: diffusers_loop(model, x0, labels, grid), args.repeats, args.device)
        null = torch.tensor(model.null_label, device=args.device)
        batched = cfg_velocity(model, labels, null, 3.0)
        two_calls = lambda x, t: -2.0 * model(x, t, null.expand_as(labels)) + 3.0 * model(x, t, labels)  # noqa: E731
        t_b, x_b = timed(lambda: ode_solve(batched, x0, grid, "euler").x, args.repeats, args.device)
        t_2, x_2 = timed(lambda: ode_solve(two_calls, x0, grid, "euler").x, args.repeats, args.device)
    diff = (x_mm - x_df).abs().max().item()
    cfg_diff = (x_b - x_2).abs().max().item()
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {args.device}")
    print(f"Euler, {args.steps} steps, batch {args.batch}, MLP hidden {args.hidden}; median of {args.repeats}")
    print(f"  mmflow ode_solve                  {1e3 * t_mm:8.2f} ms  ({1e6 * t_mm / args.steps:7.1f} us/step)")
    print(f"  diffusers FlowMatchEulerDiscrete  {1e3 * t_df:8.2f} ms  ({1e6 * t_df / args.steps:7.1f} us/step)")
    print(f"  speed-up {t_df / t_mm:.2f}x; max |x_mmflow - x_diffusers| = {diff:.2e}")
    print(f"CFG w=3: one forward of 2B rows {1e3 * t_b:8.2f} ms vs two forwards of B rows {1e3 * t_2:8.2f} ms "
          f"({t_2 / t_b:.2f}x); max diff {cfg_diff:.2e}")
    assert diff < 1e-4, "the two loops disagree: the benchmark would compare different work"
    assert cfg_diff < 1e-4


if __name__ == "__main__":
    main()
