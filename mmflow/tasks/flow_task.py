"""Flow matching as a trainer task: the CFM loss with CFG condition dropout, for any velocity model.

A subclass's `loss` turns its batch into (data z, condition) and calls `flow_loss`; the default `loss`
does that through `split_batch`. The model is called as model(x_t, t, cond) -> velocity, the same
signature the samplers use; with flow.objective meanflow as model(x_t, t, cond, h=h) -> average velocity
over [t, t + h], through a JVP (mmflow/flow/meanflow.py).
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Sequence

import torch

from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from mmflow.config import ConfigError
from mmflow.flow.cfg import Condition, apply_condition_dropout, condition_dropout_mask, take_rows
from mmflow.flow.config import ReflowConfig
from mmflow.flow.loss import cfm_loss
from mmflow.flow.meanflow import guided_velocity, jump_times, meanflow_target
from mmflow.flow.paths import GaussianPath
from mmflow.flow.reflow import ReflowPairs, pairs_problem, write_pairs
from mmflow.flow.schedules import get_schedule
from mmflow.flow.time_samplers import get_time_sampler
from mmflow.metrics.stability import noise_stability
from mmflow.sampling.generate import generate, seeded_noise
from mmflow.sampling.layout import SampleLayout, WrongOutputRequest
from mmflow.sampling.solvers import SampleOutput
from mmflow.train.random import BatchRandom
from mmflow.train.task import LossOutput, Task
from mmflow.utils.seeding import mix_seed

logger = logging.getLogger("mmflow.tasks")

VELOCITY = "velocity"  # the model name every flow task trains
REFLOW_FOLDER = "reflow_pairs"  # flow.reflow's pairs, in the run folder unless flow.reflow.folder says otherwise
STABILITY_ROWS = 8  # samples small-noise validation perturbs (x 4 sampler runs: cheap beside the quality check)


class FlowMatchingTask(Task):
    # tasks whose inputs reflow pairs can carry (prompts, labels) and whose conditions need nothing else;
    # recipe_from_dict refuses flow.reflow for the others
    supports_reflow: ClassVar[bool] = False

    def __init__(self, recipe: Any) -> None:
        super().__init__(recipe)
        self.path = GaussianPath(get_schedule(recipe.flow.schedule))
        ts = recipe.flow.time_sampler
        # VP's target blows up at t = 1 (beta' ~ 1/beta); keep training times a hair inside [0, 1]
        eps = 1e-5 if recipe.flow.schedule == "vp" else 0.0
        self.time_sampler = get_time_sampler(ts.name, eps=eps, **ts.kwargs())

    @property
    def meanflow(self) -> bool:
        """Whether the velocity model learns MeanFlow's average velocity (and so takes a second time input)."""
        return self.recipe.flow.objective == "meanflow"

    def compiled_model(self) -> str | None:
        return VELOCITY

    def jvp_training(self) -> str | None:
        return "flow.objective meanflow differentiates the model with torch.func.jvp" if self.meanflow else None

    @property
    def reflow(self) -> ReflowConfig | None:
        """flow.reflow: the run trains on a teacher's (noise, sample) pairs (mmflow/flow/reflow.py)."""
        return self.recipe.flow.reflow

    # ------------------------------------------------------------------ reflow (subclasses defer to these)
    def reflow_folder(self) -> Path:
        r = self.recipe.flow.reflow
        return Path(r.folder) if r.folder else Path(self.recipe.resolved_run_dir()) / REFLOW_FOLDER

    def reflow_inputs(self, n: int) -> list[Any]:
        """The n inputs (prompts / labels; None: drawn or unconditional) the teacher makes pairs for: by default
        the task's default inputs, cycled; a text task gives its training captions."""
        defaults = self.default_inputs()
        return [defaults[i % len(defaults)] for i in range(n)]

    def reflow_mismatch(self, teacher: FlowMatchingTask) -> str | None:
        """Why the teacher's samples are not this recipe's training data (another shape), or None."""
        ours, theirs = self.sample_layout().x_shape, teacher.sample_layout().x_shape
        return None if tuple(ours) == tuple(theirs) else f"it samples {list(theirs)}, this recipe trains on {list(ours)}"

    def make_reflow_pairs(self, device: torch.device) -> None:
        """The pairs flow.reflow asks for, made by its teacher unless the pairs folder holds them already."""
        from mmflow.pipeline import FlowPipeline  # the pipeline imports the task registry: not at import time

        r, folder = self.recipe.flow.reflow, self.reflow_folder()
        teacher = FlowPipeline.from_pretrained(r.teacher, device=device, compile=False)
        try:
            cfg = teacher.sample_config(**r.sample)
        except ConfigError as e:
            raise ConfigError(e.message, f"flow.reflow.{e.key}" if e.key else "flow.reflow.sample") from e
        mismatch = self.reflow_mismatch(teacher.task)
        if mismatch:
            raise ConfigError(f"{r.teacher} cannot make this recipe's pairs: {mismatch}", "flow.reflow.teacher")
        made_with = {"teacher": teacher.fingerprint, "pairs": r.pairs, "solver": cfg.solver, "steps": cfg.steps,
                     "grid": cfg.grid, "shift": cfg.shift, "guidance": cfg.guidance, "seed": cfg.seed}
        problem = pairs_problem(folder, made_with)
        if problem is None:
            logger.info("flow.reflow: %d pairs in %s", r.pairs, folder)
            return
        layout = teacher.task.sample_layout()
        if layout.modality is not None and teacher.task.layout_condition(layout, 1, device):
            raise ConfigError(f"{r.teacher} conditions on its output size (timing): reflow pairs do not carry it",
                              "flow.reflow.teacher")
        logger.info("flow.reflow: %s; making %d pairs with %s (%s x %d, guidance %g) into %s", problem, r.pairs,
                    r.teacher, cfg.solver, cfg.steps, cfg.guidance, folder)
        seeds = [cfg.seed + j for j in range(r.pairs)]
        inputs, _ = teacher.task.prepare_inputs(self.reflow_inputs(r.pairs), seeds)
        null = teacher.task.null_condition(teacher.velocity)
        x0 = torch.stack([torch.randn(layout.x_shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
        x1 = []
        for lo in range(0, r.pairs, r.batch_size):
            rows = inputs[lo: lo + r.batch_size]
            cond = teacher.task.input_condition(teacher.velocity, rows, device)
            x1.append(generate(teacher.velocity, x0[lo: lo + r.batch_size].to(device), cond, null, cfg,
                               teacher.path).x)  # (b, *x_shape) latents: no decode
            logger.info("flow.reflow: %d of %d pairs made", min(lo + r.batch_size, r.pairs), r.pairs)
        write_pairs(folder, x0, torch.cat(x1), inputs, made_with)
        del teacher
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the trained model is built next

    def prepare_data(self, device: torch.device) -> None:
        if self.reflow is not None:
            self.make_reflow_pairs(device)
        if self.meanflow:
            self.meanflow_teacher(device)  # a teacher that cannot serve fails here, before the models are built

    def meanflow_teacher(self, device: torch.device) -> nn.Module | None:
        """flow.meanflow.teacher's velocity model, frozen, loaded once per process onto `device` (the training
        device: every call passes it); None without one."""
        path = self.recipe.flow.meanflow.teacher
        if path is None:
            return None
        cached = getattr(self, "_meanflow_teacher", None)
        if cached is None:
            from mmflow.pipeline import FlowPipeline

            teacher = FlowPipeline.from_pretrained(path, device=device, compile=False)
            mismatch = self.reflow_mismatch(teacher.task)
            if mismatch:
                raise ConfigError(f"{path} cannot be this recipe's teacher: {mismatch}", "flow.meanflow.teacher")
            cached = teacher.velocity.eval().requires_grad_(False)
            logger.info("flow.meanflow.teacher: the target's velocity from %s (%s, frozen)", path,
                        type(cached).__name__)
            self._meanflow_teacher = cached
        return cached

    def reflow_dataset(self) -> Dataset:
        return ReflowPairs(self.reflow_folder())

    def reflow_loss(self, models: dict[str, nn.Module], batch: Any, rng: BatchRandom) -> LossOutput:
        """Flow matching on the batch's pairs: x_t between each pair's own noise and sample."""
        model = models[VELOCITY]
        x1 = batch["x1"]
        cond = self.input_condition(model, batch["input"], x1.device) if "input" in batch else None
        return self.flow_loss(model, x1, cond, rng, noise=batch["x0"])

    def split_batch(self, batch: Any) -> tuple[Tensor, Condition | None]:
        """batch -> (z (B, ...) data, condition or None), for the default `loss`; a task that overrides
        `loss` and calls `flow_loss` itself needs none."""
        raise NotImplementedError(f"{type(self).__name__}: override loss (calling flow_loss) or split_batch")

    @abstractmethod
    def null_condition(self, model: nn.Module) -> Condition | None:
        """The condition that means "unconditional" (one row, no batch dim), or None if unconditional; `model`
        is the bare velocity model (sampling)."""

    def task_null(self) -> Condition | None:
        """A null condition the task owns rather than the model (a text encoder's empty prompt), used for CFG
        dropout in training; None (default): the velocity model's forward swaps in its own for `drop` rows."""
        return None

    def loss(self, models: dict[str, nn.Module], batch: Any, rng: BatchRandom, optimizer: str, step: int) -> LossOutput:
        if self.reflow is not None:
            return self.reflow_loss(models, batch, rng)
        z, cond = self.split_batch(batch)
        return self.flow_loss(models[VELOCITY], z, cond, rng)

    def flow_loss(self, model: nn.Module, z: Tensor, cond: Condition | None, rng: BatchRandom,
                  keep: dict[str, Tensor] | None = None, mask: Tensor | None = None,
                  row_weight: Tensor | None = None, noise: Tensor | None = None) -> LossOutput:
        """The CFM loss of data z (B, ...) under cond (entries (B, ...), or None): draws t (B,), then the
        noise eps (B, ...), then (with cond and flow.cfg_dropout > 0) the CFG drop mask (B,) from rng.
        keep: condition entries joined after CFG dropout, never dropped (image-to-video's first frame);
        mask: bool, broadcastable to z, the elements the loss covers (None: all; padded frames are not);
        row_weight: (B,) the rows' weights in a sum instead of the mean (prior preservation, see cfm_loss);
        noise: (B, ...) the rows' coupled noise (reflow pairs) instead of fresh draws.
        MeanFlow then draws a second time (B,) and the rows that jump (B,), and regresses the average velocity
        over [t, t + h] on its target (mmflow/flow/meanflow.py); with fm_rows_time "first" its h = 0 rows are the FM loss of the same draws."""
        flow = self.recipe.flow
        t = rng.draw(lambda n, g: self.time_sampler.sample(n, generator=g)).to(z.dtype)  # (B,)
        eps = rng.randn(*z.shape[1:]).to(z.dtype) if noise is None else noise.to(z.dtype)  # (B, ...)
        p_drop = flow.cfg_dropout
        drop = None
        # MeanFlow's guidance in the target needs the model's velocity under the null condition: every row's
        # condition replaced by the task's null (or the model's own, through its forward's `drop`)
        guided = self.meanflow and flow.meanflow.guidance != 1.0 and cond is not None
        if guided:
            null = self.task_null()
            everyone = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)  # (B,)
            null_cond, null_extra = ((apply_condition_dropout(cond, null, everyone), {}) if null is not None
                                     else (cond, {"drop": everyone}))
            if keep:
                null_cond = {**null_cond, **keep}  # type: ignore[dict-item]
        if cond is not None and p_drop > 0:
            drop = rng.draw(lambda n, g: condition_dropout_mask(n, p_drop, generator=g))  # (B,) bool
            null = self.task_null()
            if null is not None:  # the task's own null (e.g. the empty prompt's encoding) goes in here
                cond, drop = apply_condition_dropout(cond, null, drop), None
        # else the model swaps in its own null for the dropped rows (its forward's `drop`)
        if keep:
            cond = {**cond, **keep}  # type: ignore[dict-item]
        extra = {} if drop is None else {"drop": drop}
        adaptive = {}
        if self.meanflow:  # drawn after FM's draws, so its h = 0 rows see exactly FM's t, eps and drop
            other = rng.draw(lambda n, g: self.time_sampler.sample(n, generator=g)).to(z.dtype)  # (B,)
            jump = rng.draw(lambda n, g: torch.rand(n, generator=g) < flow.meanflow.ratio_r_neq_t)  # (B,) bool
            t, h = jump_times(t, other, jump, flow.meanflow.fm_rows_time)
            ps = self.path.sample(z, t, eps)
            v = ps.target
            teacher = self.meanflow_teacher(z.device)
            if teacher is not None:  # the marginal velocity at x_t for the pair's v (dropped rows: the null's)
                with torch.no_grad():
                    v = teacher(ps.x_t, t, cond, **extra).to(v.dtype)
            if guided:
                mfc, zero = flow.meanflow, torch.zeros_like(t)
                with torch.no_grad():
                    u_null = (model(ps.x_t, t, null_cond, h=zero, **null_extra) if teacher is None
                              else teacher(ps.x_t, t, null_cond, **null_extra))
                    u_cond = model(ps.x_t, t, cond, h=zero, **extra) if mfc.guidance_kappa else None
                v = guided_velocity(v, u_null, mfc.guidance, u_cond, mfc.guidance_kappa)
            bare = model.module if isinstance(model, DistributedDataParallel) else model

            def rows_fn(rows: Tensor) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
                # .forward: eager even where the module is compiled in place (the JVP cannot run a graph)
                c, e = (None if cond is None else take_rows(cond, rows)), take_rows(extra, rows)
                return lambda x_, t_, h_: bare.forward(x_, t_, c, h=h_, **e)

            mf = meanflow_target(lambda x_, t_, h_: model(x_, t_, cond, h=h_, **extra), ps.x_t, t, h, v, rows_fn,
                                 flow.meanflow.tangent)
            pred, target = mf.u, mf.target
            adaptive = {"adaptive_p": flow.meanflow.adaptive_p, "adaptive_c": flow.meanflow.adaptive_c}
        else:
            ps = self.path.sample(z, t, eps)
            pred, target = model(ps.x_t, t, cond, **extra), ps.target
        out = cfm_loss(pred.float(), target.float(), t, flow.loss_weighting, flow.loss, flow.huber_c, mask,
                       row_weight, **adaptive)
        # MeanFlow's adaptive loss sits near 1 whatever the fit (mse / (mse + c)): log the plain mse beside it
        logs = {"mse": out.per_example.detach().mean().item()} if self.meanflow else {}
        return LossOutput(out.loss, logs, out.per_example.detach(), t.detach())

    def sample(self, model: nn.Module, x0: Tensor, cond: Condition | None, sample_cfg: Any, **kwargs: Any) -> SampleOutput:
        """`generate` (mmflow/sampling/generate.py) with this task's path and null condition: noise x0
        (B, ...) -> samples, float32 on CPU; kwargs: guidance, generator, decode, clamp, batch_size, ..."""
        null = None if cond is None else self.null_condition(model)
        return generate(model, x0, cond, null, sample_cfg, self.path, **kwargs)

    def stability(self, velocity: nn.Module, device: torch.device, cond: Condition | None = None,
                  rows: int = STABILITY_ROWS, features: Callable[[Tensor], Tensor] | None = None) -> dict[str, float]:
        """Small-noise validation (mmflow.metrics.stability) of `rows` fixed samples drawn with the recipe's
        sampler: stability_amp_<s> / stability_rms_<s> (and stability_feat_<s> with `features`) per scale s.

        cond: one row per sample on `device`; default: the task's default inputs, cycled, through
        prepare_inputs / input_condition (a task whose conditions need an attached model passes its own).
        """
        cfg, layout = self.recipe.sample, self.sample_layout()
        if cond is None:
            defaults = self.default_inputs()
            inputs, _ = self.prepare_inputs([defaults[i % len(defaults)] for i in range(rows)],
                                            [mix_seed(cfg.seed, i) for i in range(rows)])
            cond = self.input_condition(velocity, inputs, device)
            extra = self.layout_condition(layout, rows, device)
            if extra:  # (a task with layout conditions has dict conditions)
                cond = {**cond, **extra}  # type: ignore[dict-item]
        x0, g = seeded_noise((rows, *layout.x_shape), cfg.seed)
        after_x0 = g.get_state()

        def sample_fn(x: Tensor) -> Tensor:
            # the generator restarted per call: a stochastic (SDE) sampler sees the same noise on every call
            g.set_state(after_x0)
            return self.sample(velocity, x.to(device), cond, cfg, generator=g, decode=layout.decode,
                               clamp=layout.clamp, check_finite=False).x

        # the directions' seed differs from x0's, or the perturbation would be x0 itself (a mere rescaling)
        return noise_stability(sample_fn, x0, seed=mix_seed(cfg.seed, 1), features=features)


    # ------------------------------------------------------------------ sampling from user input (FlowPipeline)
    # What the pipeline asks a task: the kind of input, how it becomes a condition, and what is drawn.
    input_kind: ClassVar[Literal["text", "label", "none"]] = "none"

    def sample_layout(self, size: int | tuple[int, int] | None = None, num_frames: int | None = None,
                      seconds: float | None = None) -> SampleLayout:
        """What one sample is (x0's shape, decode, output modality) at the asked output size; the defaults
        are the training size. Refuses (WrongOutputRequest) what the model cannot make, saying what it is."""
        raise NotImplementedError(f"{type(self).__name__} does not sample through FlowPipeline")

    def layout_condition(self, layout: SampleLayout, rows: int, device: torch.device) -> dict[str, Tensor]:
        """Condition entries that the output size fixes, `rows` each, joined to both CFG branches (e.g. an audio
        model's timing); none by default."""
        return {}

    def default_inputs(self) -> list[Any]:
        """The prompts / labels sampled when the user gives none ([None]: unconditional rows)."""
        return [None]

    def inputs_from_labels(self, labels: Sequence[int]) -> list[Any]:
        """Class labels as this model's inputs (a text model may map them to prompts, see digits)."""
        if self.input_kind == "label":
            return list(labels)
        if self.input_kind == "text":
            raise WrongOutputRequest(f"this {self.name} model is text-conditional: give prompts (--prompt), not --label")
        raise WrongOutputRequest(f"--label given, but this {self.name} model is unconditional")

    def prepare_inputs(self, rows: Sequence[Any], seeds: Sequence[int]) -> tuple[list[Any], list[str]]:
        """The rows' inputs as sampled (e.g. a missing label drawn from the row's seed) and warnings (e.g. a
        prompt truncated to the encoder's limit); inputs the model cannot take raise a UserError naming them,
        before any sampling."""
        return list(rows), []

    def input_condition(self, velocity: nn.Module, rows: Sequence[Any], device: torch.device) -> Condition | None:
        """One condition row per prepared input (prompt or label) on `device`; None: unconditional."""
        return None

    def negative_condition(self, velocity: nn.Module, prompt: str, device: torch.device) -> Condition:
        """The condition CFG steers away from instead of u(null) (text models), one row."""
        raise WrongOutputRequest(f"a negative prompt needs a text-conditional model; {self.name} takes "
                                 f"{'class labels' if self.input_kind == 'label' else 'no input'}")

    def sample_report(self, media: Tensor, inputs: Sequence[Any]) -> dict[str, Any]:
        """Extra facts about sampled media for `mmflow sample`'s summary (e.g. what a classifier sees)."""
        return {}

    def points_preview(self, points: Tensor, path: Path, title: str) -> Path | None:
        """A picture of samples that are not media (layout.modality None), e.g. 2-D points over the data."""
        return None


def fixed_layout(layout: SampleLayout, task: str, **asked: Any) -> SampleLayout:
    """`layout`, refusing any output size asked of a model that makes one size only."""
    given = [k for k, v in asked.items() if v is not None]
    if given:
        raise WrongOutputRequest(f"{given[0]} cannot be set: this {task} model makes {layout.describe()} only")
    return layout

