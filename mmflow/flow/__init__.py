"""Flow matching: schedules, Gaussian paths and conversions, time samplers, CFM loss, CFG dropout.

Convention: t = 0 is noise (N(0, I)), t = 1 is data; x_t = alpha_t z + beta_t eps.
"""

from mmflow.flow.analytic import GaussianMixture, MixtureMarginal, eight_gaussians
from mmflow.flow.cfg import Condition, apply_condition_dropout, broadcast_null, condition_dropout_mask
from mmflow.flow.loss import LOSS_WEIGHTINGS, CFMLoss, TBinStats, cfm_loss, loss_weight
from mmflow.flow.paths import GaussianPath, PathSample
from mmflow.flow.schedules import (
    SCHEDULES,
    CondOTSchedule,
    CosineSchedule,
    Schedule,
    ScheduleOutput,
    VPSchedule,
    get_schedule,
)
from mmflow.flow.time_samplers import (
    TIME_SAMPLERS,
    CosMapTimeSampler,
    LogitNormalTimeSampler,
    ModeTimeSampler,
    TimeSampler,
    UniformTimeSampler,
    get_time_sampler,
)

__all__ = [
    "CFMLoss",
    "CondOTSchedule",
    "Condition",
    "CosMapTimeSampler",
    "CosineSchedule",
    "GaussianMixture",
    "GaussianPath",
    "LOSS_WEIGHTINGS",
    "LogitNormalTimeSampler",
    "MixtureMarginal",
    "ModeTimeSampler",
    "PathSample",
    "SCHEDULES",
    "Schedule",
    "ScheduleOutput",
    "TBinStats",
    "TIME_SAMPLERS",
    "TimeSampler",
    "UniformTimeSampler",
    "VPSchedule",
    "apply_condition_dropout",
    "broadcast_null",
    "cfm_loss",
    "condition_dropout_mask",
    "eight_gaussians",
    "get_schedule",
    "get_time_sampler",
    "loss_weight",
]
