"""Training: the Accelerate trainer, the task contract, checkpoints, EMA, LR schedules, samplers and per-batch RNG."""
