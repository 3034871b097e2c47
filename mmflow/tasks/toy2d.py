"""Toy 2-D flow matching: class-conditional 8-gaussians, two-moons, checkerboard and spirals.

The seeds' debugging bed: the samples, their trajectories, the loss per t-bin and the vector-field
norm per t are drawn to PNGs, and sample quality is measured (sliced W1 and energy distance) against
the floor two independent draws of the data give.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from mmflow.data.toy2d import TOY_DATASETS, Toy2DDataset, sample_toy
from mmflow.flow.loss import TBinStats
from mmflow.metrics.two_sample import two_sample_report
from mmflow.models.toy_mlp import MLPVelocity, MLPVelocityConfig
from mmflow.sampling.generate import seeded_noise
from mmflow.sampling.layout import SampleLayout, WrongOutputRequest
from mmflow.tasks import register_task
from mmflow.tasks.flow_task import VELOCITY, FlowMatchingTask, fixed_layout
from mmflow.tasks.toy2d_plots import plot_samples, plot_t_diagnostics, plot_trajectories
from mmflow.train.task import format_metric
from mmflow.utils.seeding import mix_seed

# Evaluation draws use seeds far from any training seed, so the data they compare against is unseen.
EVAL_SEED = 1_000_003
# Quality is averaged over this many fresh reference draws (each of sample.num_samples points): the
# value and its data-vs-data floor are then each a mean of 4, not one noisy estimate.
EVAL_REFERENCES = 4
REFERENCE_RK4_STEPS = 25  # 100 velocity evaluations


@dataclass
class Toy2DDataConfig:
    dataset: Literal["eight_gaussians", "two_moons", "checkerboard", "spirals"] = "eight_gaussians"
    num_samples: int = field(default=100_000, metadata={"min": 1, "help": "size of the fixed training set"})
    conditional: bool = field(default=True, metadata={"help": "condition on the class label (enables CFG)"})


@dataclass
class Toy2DModelConfig:
    hidden: int = field(default=256, metadata={"min": 1})
    depth: int = field(default=4, metadata={"min": 1})
    time_frequency_dim: int = field(default=64, metadata={"min": 2})
    time_scale: float = field(default=1000.0, metadata={
        "min": 0.0, "min_exclusive": True,
        "help": "t (and MeanFlow's h) times this before the sinusoidal features; MeanFlow trains better at 1"})
    ignore_time: bool = field(default=False, metadata={"help": "debug ablation: the model never sees t"})


@register_task
class Toy2DTask(FlowMatchingTask):
    name = "toy2d"
    supports_reflow = True
    data_config_class = Toy2DDataConfig
    model_config_class = Toy2DModelConfig

    @property
    def num_classes(self) -> int:
        return TOY_DATASETS[self.recipe.data.dataset][1] if self.recipe.data.conditional else 0

    def build_models(self) -> dict[str, nn.Module]:
        m = self.recipe.model
        cfg = MLPVelocityConfig(dim=2, hidden=m.hidden, depth=m.depth, num_classes=self.num_classes,
                                time_frequency_dim=m.time_frequency_dim, time_scale=m.time_scale,
                                ignore_time=m.ignore_time, interval_embed=self.meanflow)
        return {VELOCITY: MLPVelocity(cfg)}

    def build_dataset(self) -> Dataset:
        if self.reflow is not None:
            return self.reflow_dataset()
        return Toy2DDataset(self.recipe.data.dataset, self.recipe.data.num_samples, self.recipe.seed)

    def split_batch(self, batch: Any) -> tuple[Tensor, Tensor | None]:
        x, label = batch
        return x, (label if self.recipe.data.conditional else None)

    def null_condition(self, model: nn.Module) -> Tensor | None:
        if not self.recipe.data.conditional:
            return None
        return torch.tensor(model.null_label, dtype=torch.long)

    def pipeline_info(self) -> dict[str, Any]:
        return {"task": self.name, "model": VELOCITY}

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, model: nn.Module, device: torch.device, sample_cfg: Any | None = None,
                 out_dir: Path | None = None, title: str = "") -> dict[str, float]:
        """Sample `sample_cfg.num_samples` points, compare with fresh data, optionally draw the PNGs.

        The samples follow the labels of one fresh draw (data_again); the value is their distance to
        EVAL_REFERENCES other fresh draws, the floor that of data_again to the same draws.
        """
        cfg = sample_cfg or self.recipe.sample
        n = cfg.num_samples
        refs = [sample_toy(self.recipe.data.dataset, n, EVAL_SEED + 10 + k)[0] for k in range(EVAL_REFERENCES)]
        data_again, labels = sample_toy(self.recipe.data.dataset, n, EVAL_SEED + 1)
        x0, g = seeded_noise((n, 2), cfg.seed)
        cond = labels.to(device) if self.recipe.data.conditional else None  # samples follow data_again's labels
        # validation reports non-finite samples as unknown metrics (the trainer writes them as null)
        out = self.sample(model, x0.to(device), cond, cfg, generator=g, return_trajectory=out_dir is not None,
                          check_finite=False)
        samples = out.x
        report = two_sample_report(samples, refs, data_again, n_projections=256, seed=cfg.seed)
        metrics = {**report.to_dict(), "nfe": float(out.nfe)}
        if out_dir is not None:
            head = f"{title}{cfg.solver} x{cfg.steps} ({out.nfe} NFE), w={cfg.guidance}: {report.format()}"
            plot_samples(samples, refs[0], out_dir / "samples.png", head)
            plot_trajectories(out.trajectory, out_dir / "trajectories.png", f"{cfg.solver}, {out.nfe} NFE")
            metrics.update(self.t_diagnostics(model, device, out_dir))
        return metrics

    def t_diagnostics(self, model: nn.Module, device: torch.device, out_dir: Path,
                      n_bins: int = 10, per_bin: int = 2000) -> dict[str, float]:
        """Loss per t-bin and mean |u_theta| vs |target| per t on fresh data (stratified t)."""
        n = n_bins * per_bin
        z, labels = sample_toy(self.recipe.data.dataset, n, EVAL_SEED + 2)
        g = torch.Generator().manual_seed(EVAL_SEED)
        t = (torch.arange(n) // per_bin + torch.rand(n, generator=g)) / n_bins  # (n,) stratified
        ps = self.path.sample(z, t, torch.randn(n, 2, generator=g))
        cond = labels.to(device) if self.recipe.data.conditional else None
        pred = model(ps.x_t.to(device), t.to(device), cond).float().cpu()
        loss, norm, target_norm = TBinStats(n_bins), TBinStats(n_bins), TBinStats(n_bins)
        loss.update((pred - ps.target).pow(2).mean(dim=1), t)
        norm.update(pred.norm(dim=1), t)
        target_norm.update(ps.target.norm(dim=1), t)
        centers = ((loss.edges[:-1] + loss.edges[1:]) / 2).numpy()
        plot_t_diagnostics(centers, loss.means().numpy(), norm.means().numpy(), target_norm.means().numpy(),
                           out_dir / "t_diagnostics.png")
        out = {f"loss_t{i}": float(v) for i, v in enumerate(loss.means())}
        out.update({f"vnorm_t{i}": float(v) for i, v in enumerate(norm.means())})
        return out

    def validate(self, models: dict[str, nn.Module], out_dir: Path, step: int, device: torch.device) -> dict[str, float]:
        """Quality with the recipe's sampler, and with an accurate solve (RK4, 100 evaluations) whose
        remaining gap to the floor is the model's own error rather than the solver's; small-noise stability."""
        metrics = self.evaluate(models[VELOCITY], device, out_dir=out_dir, title=f"step {step}: ")
        accurate = replace(self.recipe.sample, solver="rk4", steps=REFERENCE_RK4_STEPS, grid="uniform", shift=1.0)
        reference = self.evaluate(models[VELOCITY], device, accurate)
        metrics.update({f"ode100_{k}": v for k, v in reference.items()})
        metrics.update(self.stability(models[VELOCITY], device))  # small-noise check, 8 rows of the recipe's sampler
        return metrics

    # ------------------------------------------------------------------ sampling (FlowPipeline)
    @property
    def input_kind(self) -> str:  # type: ignore[override]
        return "label" if self.recipe.data.conditional else "none"

    def sample_layout(self, size: Any = None, num_frames: int | None = None, seconds: float | None = None) -> SampleLayout:
        return fixed_layout(SampleLayout((2,), (2,), None, clamp=False), self.name, size=size, num_frames=num_frames,
                            seconds=seconds)

    def prepare_inputs(self, rows: Sequence[Any], seeds: Sequence[int]) -> tuple[list[Any], list[str]]:
        """A row without a label gets one drawn from its own seed (mixed, so it is independent of its noise)."""
        out = []
        for row, seed in zip(rows, seeds):
            if row is None and self.num_classes:
                g = torch.Generator().manual_seed(mix_seed(seed, 1))
                row = int(torch.randint(0, self.num_classes, (1,), generator=g))
            elif row is not None and not 0 <= row < self.num_classes:
                raise WrongOutputRequest(f"--label {row} is out of range: this model knows labels 0..{self.num_classes - 1}")
            out.append(row)
        return out, []

    def input_condition(self, velocity: nn.Module, rows: Sequence[Any], device: torch.device) -> Tensor | None:
        return torch.tensor(list(rows), device=device) if self.num_classes else None

    def points_preview(self, points: Tensor, path: Path, title: str) -> Path:
        data, _ = sample_toy(self.recipe.data.dataset, len(points), EVAL_SEED)
        plot_samples(points, data, path, title)
        return path

    def summary_lines(self, metrics: dict[str, float | None], run_dir: Path) -> list[str]:
        """The quality of the recipe's sampler and of the accurate RK4 solve, each against its floor."""
        lines, cfg = [], self.recipe.sample
        for prefix, what in (("", f"{cfg.solver} x{cfg.steps}"), ("ode100_", f"rk4 x{REFERENCE_RK4_STEPS}")):
            if f"{prefix}sliced_w1" not in metrics:
                continue
            m = {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}
            lines.append(f"quality ({what}, {format_metric(m['nfe'], '.0f')} NFE, {cfg.num_samples} samples vs fresh data):\n"
                         f"  sliced W1 {format_metric(m['sliced_w1'], '.4f')}  (data-vs-data floor "
                         f"{format_metric(m['floor_sliced_w1'], '.4f')}, ratio {format_metric(m['ratio_sliced_w1'], '.2f')}x)\n"
                         f"  energy    {format_metric(m['energy'], '.5f')} (data-vs-data floor "
                         f"{format_metric(m['floor_energy'], '.5f')}, ratio {format_metric(m['ratio_energy'], '.2f')}x)")
        return lines
