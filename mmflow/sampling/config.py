"""The recipe's `sample:` section: solver, grid, guidance and seed, the defaults of validation and
`mmflow sample` (overridden per call by FlowPipeline and the command line)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from mmflow.config import check


@dataclass
class SampleConfig:
    solver: Literal["euler", "midpoint", "heun", "rk4", "sde", "meanflow"] = field(default="heun", metadata={
        "help": "meanflow: jumps with a MeanFlow model's average velocity (flow.objective: meanflow), 1 evaluation each"})
    steps: int = field(default=8, metadata={"min": 1, "help": "solver steps (heun/midpoint use 2 evaluations each; "
                                                             "meanflow: the number of jumps, 1 = one-step)"})
    grid: Literal["uniform", "shifted", "sd3"] = field(default="uniform", metadata={
        "help": "time grid (mmflow/sampling/grids.py); sd3: diffusers' SD3 scheduler, for converted SD3 pipelines"})
    shift: float = field(default=1.0, metadata={"min": 0.0, "min_exclusive": True,
                                                "help": "SD3 shift for grid: shifted or sd3"})
    guidance: float = field(default=1.0, metadata={
        "min": 0.0, "help": "CFG scale w: 0 = unconditional, 1 = plain conditional, > 1 = stronger guidance. "
                            "Negative w (steering away from the condition) is refused: it is only an experiment, "
                            "and usually a typo"})
    noise_scale: float = field(default=1.0, metadata={"min": 0.0, "help": "sde only"})
    diffusion: Literal["beta", "constant"] = field(default="beta", metadata={"help": "sde only: g(t) shape"})
    num_samples: int = field(default=10000, metadata={"min": 1})
    seed: int = 0

    def validate(self) -> None:
        check(self.grid != "uniform" or self.shift == 1.0, "shift",
              f"{self.shift} only applies with grid: shifted or sd3 (the uniform grid has no shift)")


def check_sample_overrides(settings: Mapping[str, Any], counted_by: str) -> None:
    """Sample settings over a model's recipe sample section (data.prior.sample, flow.reflow.sample): known keys
    only, and no num_samples (`counted_by` says what sets how many are made); ConfigError keys are sample.<key>."""
    known = [f.name for f in dataclasses.fields(SampleConfig)]
    unknown = [k for k in settings if k not in known]
    check(not unknown, f"sample.{unknown[0]}" if unknown else "sample",
          f"not a sample setting; known: {', '.join(known)}")
    check("num_samples" not in settings, "sample.num_samples", f"how many are made is {counted_by}")
