"""The overrides that shrink a text_to_media recipe for its CLI test: a 1-block, 32-wide MM-DiT, batch 4,
`steps` steps with a checkpoint and a validation every 2, two sampling steps, and `samples` evaluation
samples of the held-out folder `test`; data and cache from `data`."""

from __future__ import annotations

from pathlib import Path


def shortened(data: Path, test: Path, steps: int, samples: int = 4) -> list[str]:
    return [f"data.path={data}", f"data.cache={data.parent / 'cache'}", f"eval.real={test}",
            "model.mmdit.hidden_size=32", "model.mmdit.depth=1", "model.mmdit.num_heads=2", "train.batch_size=4",
            f"train.max_steps={steps}", "train.warmup_steps=0", "train.checkpoint_every=2", "train.validate_every=2",
            "train.log_every=1", "data.eval_per_prompt=1", f"eval.num_samples={samples}", f"eval.batch_size={samples}",
            "sample.steps=2"]
