"""The overrides that shrink a text_to_media recipe for its CLI test: a 1-block, 32-wide MM-DiT, batch 4,
`steps` steps with a checkpoint and a validation every 2, two sampling steps, and `samples` evaluation
samples of the held-out folder `test`; data and cache from `data`. Also what several recipe tests check
their outputs with (an MP4 decoded by PyAV, an adapter-only export)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def shortened(data: Path, test: Path, steps: int, samples: int = 4) -> list[str]:
    return [f"data.path={data}", f"data.cache={data.parent / 'cache'}", f"eval.real={test}",
            "model.mmdit.hidden_size=32", "model.mmdit.depth=1", "model.mmdit.num_heads=2", "train.batch_size=4",
            f"train.max_steps={steps}", "train.warmup_steps=0", "train.checkpoint_every=2", "train.validate_every=2",
            "train.log_every=1", "data.eval_per_prompt=1", f"eval.num_samples={samples}", f"eval.batch_size={samples}",
            "sample.steps=2"]


def shipped_shapes_finetune(root: Path) -> tuple[Path, Path, list[str]]:
    """For recipes that fine-tune the shipped shapes_t2i (the model stays the shipped one): small train and test
    shapes folders under `root`, and the overrides that point the recipe at them and shrink only its counts (two
    steps, batch 4, a validation with 4 probe samples)."""
    from mmflow.data.shapes import ShapesConfig, write_shapes_folder

    data, test = root / "train", root / "test"
    write_shapes_folder(data, ShapesConfig(n_one=8, n_two=2), split="train")
    write_shapes_folder(test, ShapesConfig(n_test_two=2), split="test")
    return data, test, [
        f"data.path={data}", f"data.cache={root / 'cache'}", f"eval.real={test}", "train.batch_size=4",
        "train.max_steps=2", "train.warmup_steps=0", "train.checkpoint_every=2", "train.validate_every=2",
        "train.log_every=1", "data.eval_per_prompt=1", "eval.num_samples=4", "eval.batch_size=4"]


def assert_adapter_only(run: Path, base: Path, step: int = 2) -> None:
    """A LoRA run's export is a peft folder far smaller than the base model's weights, and its checkpoint at
    `step` holds LoRA tensors only."""
    from safetensors import safe_open

    from mmflow.models.lora import ADAPTER_WEIGHTS

    velocity = run / "model" / "models" / "velocity"
    assert (velocity / ADAPTER_WEIGHTS).is_file() and not (velocity / "model.safetensors").exists()
    base_bytes = (base / "models" / "velocity" / "model.safetensors").stat().st_size
    assert (velocity / ADAPTER_WEIGHTS).stat().st_size < base_bytes / 4
    with safe_open(str(run / "checkpoints" / f"step_{step:08d}" / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert keys and all("lora_" in k for k in keys), keys[:4]


def concept_overrides(data: Path, test: Path) -> list[str]:
    """A concept-LoRA recipe (on a shipped model) shrunk: data and held-out prompts from `data` / `test`, two steps
    at batch 4, a validation with 4 probe samples at two sampling steps."""
    return [f"data.path={data}", f"data.cache={data.parent / 'cache'}", f"eval.real={test}", "train.batch_size=4",
            "train.max_steps=2", "train.warmup_steps=0", "train.checkpoint_every=2", "train.validate_every=2",
            "train.log_every=1", "data.eval_per_prompt=1", "eval.num_samples=4", "eval.batch_size=4", "sample.steps=2"]


def train_concept_adapter(recipe: Path, base: Path, data: Path, test: Path, run: Path, check: str, attribute: str,
                          capsys: Any) -> None:
    """Train a concept-LoRA recipe shortened (concept_overrides) through the CLI, from the repository root; the
    validation's probe table reads `attribute` as an accuracy, and the run saved an adapter only."""
    from mmflow.cli import main

    assert main(["train", str(recipe), "--run-dir", str(run), *concept_overrides(data, test)]) == 0
    out = capsys.readouterr().out
    assert f"prompt check '{check}': 4 samples" in out, out
    table = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.startswith("  ")}
    assert 0.0 <= float(table[attribute]) <= 1.0, out
    assert_adapter_only(run, base)


def mp4_frames(path: Path) -> tuple[np.ndarray, float, str]:
    """An MP4 decoded with PyAV, independently of mmflow's reader: frames (T, H, W, 3) uint8, fps, codec name."""
    import av

    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
        return frames, float(stream.average_rate), stream.codec_context.name
