"""The recipe's `flow:` section: the probability path, the training-time distribution of t, the objective
(flow matching or MeanFlow), the loss and its weighting, and CFG dropout (the schema; the objects are built
in mmflow.tasks.flow_task)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mmflow.config import check
from mmflow.flow.loss import DEFAULT_HUBER_C
from mmflow.sampling.config import check_sample_overrides


@dataclass
class TimeSamplerConfig:
    """Training-time distribution of t (SD3's samplers; see mmflow.flow.time_samplers)."""

    name: Literal["uniform", "logit_normal", "mode", "cosmap"] = "uniform"
    m: float = field(default=0.0, metadata={"help": "logit_normal location (in SD3's sigma = 1 - t)"})
    s: float = field(default=1.0, metadata={"min": 0.0, "min_exclusive": True, "help": "logit_normal scale"})
    scale: float = field(default=1.29, metadata={"help": "mode sampler's scale"})

    def kwargs(self) -> dict[str, float]:
        return {"logit_normal": {"m": self.m, "s": self.s}, "mode": {"scale": self.scale}}.get(self.name, {})


@dataclass
class MeanFlowConfig:
    """MeanFlow (Geng et al. 2025, mmflow/flow/meanflow.py): the model learns the average velocity over a jump of
    length h from t towards data; h = 0 rows are plain flow matching. Defaults: the paper's ImageNet setting."""

    ratio_r_neq_t: float = field(default=0.25, metadata={
        "min": 0.0, "max": 1.0, "help": "fraction of rows with a jump h > 0 (the paper's r != t); the rest are FM rows"})
    fm_rows_time: Literal["first", "min"] = field(default="first", metadata={
        "help": "t of the h = 0 rows: first = the first draw (those rows are flow matching's loss exactly); min = the "
                "smaller of both draws, as the paper (its sorted pair before r := t), which moves them towards noise"})
    adaptive_p: float = field(default=1.0, metadata={
        "min": 0.0, "help": "adaptive loss weight 1 / (mse + c)^p per row (stop-gradient); 0 = plain MSE"})
    adaptive_c: float = field(default=1e-3, metadata={
        "min": 0.0, "min_exclusive": True, "help": "its c; note mse is a mean over elements here (the paper's sum)"})
    tangent: Literal["path", "model"] = field(default="path", metadata={
        "help": "the velocity along which the target's du/dt is taken: path = the pair's conditional velocity (the "
                "paper); model = the network's own u(z, t, 0), no gradient (improved MeanFlow, arXiv 2512.02012: "
                "the marginal velocity, free of the pair's noise; one more no-grad forward of the jumping rows)"})
    teacher: str | None = field(default=None, metadata={
        "exists": "dir", "help": "a trained flow model (run, checkpoint or export; usually train.init_from too) whose "
                                 "velocity, frozen, replaces the pair's conditional velocity in the target and the "
                                 "JVP's tangent (and gives guidance's null velocity): the marginal field the jumps "
                                 "integrate, without the pair's noise. One or two no-grad forwards of it per step; "
                                 "null: none, the paper's teacher-free MeanFlow"})
    guidance: float = field(default=1.0, metadata={
        "min": 1.0, "help": "the paper's omega: classifier-free guidance folded into the target (its Sec. 4.2), so the "
                            "model learns the guided field and samples with sample.guidance 1 (one row per jump); "
                            "1 = off. Costs one no-grad forward of the null condition per step"})
    guidance_kappa: float = field(default=0.0, metadata={
        "min": 0.0, "max": 1.0, "max_exclusive": True,
        "help": "the paper's kappa: part of the target from the model's own conditional velocity; the guidance "
                "learnt is guidance / (1 - kappa). Costs another no-grad forward"})


@dataclass
class ReflowConfig:
    """flow.reflow: rectified-flow reflow (mmflow/flow/reflow.py): train on (noise, sample) pairs of a teacher's
    ODE instead of independent noise and data, which straightens the paths for few-step sampling."""

    teacher: str = field(metadata={
        "exists": "dir", "help": "the trained flow model whose ODE makes the pairs (run, checkpoint or export); "
                                 "usually train.init_from too"})
    pairs: int = field(default=4096, metadata={"min": 1, "help": "pairs made (once; the run then trains on them)"})
    sample: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "sample settings (solver, steps, guidance, grid, ...) over the teacher's recipe sample section, for "
                "making the pairs; pair j's noise is drawn from seed + j. The guidance is baked into the pairs: "
                "sample the student at guidance 1"})
    batch_size: int = field(default=256, metadata={"min": 1, "help": "pairs made at once"})
    folder: str | None = field(default=None, metadata={
        "help": "where the pairs are kept (made when missing or made with other settings); null: <run>/reflow_pairs"})

    def validate(self) -> None:
        check(self.teacher.strip() != "", "teacher", "must name the teacher model")
        check_sample_overrides(self.sample, "flow.reflow.pairs")
        check(self.sample.get("solver") != "sde", "sample.solver",
              "reflow couples each noise with ONE sample: an ODE solver (euler, heun, ...), not sde")


@dataclass
class FlowConfig:
    schedule: Literal["condot", "cosine", "vp"] = "condot"
    time_sampler: TimeSamplerConfig = field(default_factory=TimeSamplerConfig)
    loss_weighting: Literal["none", "sigma_sqrt", "cosmap"] = "none"
    loss: Literal["l2", "l1", "pseudo_huber"] = field(
        default="l2", metadata={"help": "per-example loss of the velocity residual (mmflow.flow.loss)"})
    huber_c: float = field(default=DEFAULT_HUBER_C, metadata={
        "min": 0.0, "min_exclusive": True,
        "help": "pseudo_huber's c on the residual's RMS (= Song & Dhariwal's 0.00054 sqrt(dim) on its norm)"})
    cfg_dropout: float = field(default=0.1, metadata={"min": 0.0, "max": 1.0, "help": "P(condition -> null) in training"})
    objective: Literal["fm", "meanflow"] = field(default="fm", metadata={
        "help": "fm: regress the velocity; meanflow: the average velocity over [t, t + h] (1-step sampling with "
                "sample.solver: meanflow); the model gains a zero-initialised second time input"})
    meanflow: MeanFlowConfig = field(default_factory=MeanFlowConfig)
    reflow: ReflowConfig | None = field(default=None, metadata={
        "help": "rectified-flow reflow on a teacher's (noise, sample) pairs (mmflow/flow/reflow.py); null: none"})

    def validate(self) -> None:
        check(self.reflow is None or self.objective == "fm", "reflow",
              "reflow trains the velocity (objective fm) on a teacher's pairs; MeanFlow on pairs is not supported")
        check(self.objective == "meanflow" or (self.meanflow.guidance == 1.0 and self.meanflow.guidance_kappa == 0.0),
              "meanflow.guidance", "guidance in the target is MeanFlow's (objective meanflow); a flow-matching model "
              "is guided at sampling (sample.guidance)")
        check(self.objective == "meanflow" or self.meanflow.teacher is None, "meanflow.teacher",
              "a teacher in the target is MeanFlow's (objective meanflow); flow matching from a teacher is reflow")
        check(self.meanflow.teacher is None or self.meanflow.guidance_kappa == 0.0, "meanflow.guidance_kappa",
              "kappa mixes in the student's own conditional velocity; with meanflow.teacher the guided field is the "
              "teacher's: set it to 0")
        check(self.objective == "fm" or self.loss == "l2", "loss",
              f"{self.loss} with objective meanflow: MeanFlow's robustness is its adaptive weight "
              f"(flow.meanflow.adaptive_p); use loss: l2")
