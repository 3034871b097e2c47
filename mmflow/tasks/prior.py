"""DreamBooth-style prior preservation (data.prior): class items made by the base model, mixed into every batch.

DreamBooth (Ruiz et al. 2023; diffusers' train_dreambooth*.py) fine-tunes a model on a few items of one
subject captioned with a rare token ("a photo of sks dog"), and keeps the class ("a photo of a dog") from
drifting towards the subject by also training on items the *base* model made from the class prompt:

    data:
      path: data/my_dog                 # the subject, captioned "a photo of sks dog"
      prior: {path: data/dog_class, prompt: "a photo of a dog", num: 200, fraction: 0.5, weight: 1.0}
    train: {init_from: checkpoints/base, lora: {rank: 8}}

Before training (`mmflow train` and `mmflow prepare`, main process only), a class folder holding fewer than
`num` items is topped up by `make_class_media`: train.init_from's model samples the missing ones from the
class prompt through FlowPipeline (item j from seed sample.seed + j, so a top-up continues the same series),
written as a normal media folder (the modality's files + metadata.jsonl rows {file_name, text: prompt}); each
file is renamed into place and only then listed, so a stopped run leaves no half-written item (unlisted
leftovers are removed at the next start). Each batch then holds round(fraction * B) class rows after its
instance rows (mmflow/data/joint.py's JointBatchSampler), and the loss is DreamBooth's

    L = mean_{instance rows} l_b + weight * mean_{class rows} l_b,     l_b = w(t_b) rho(u_b - target_b)

(`prior_row_weights`): with weight 1 and fraction 0.5 it is twice the plain batch mean, as in diffusers.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmflow.config import ConfigError, check
from mmflow.data.captions import JSONL, CaptionIndex, MediaEntry, find_media, load_captions
from mmflow.sampling.config import check_sample_overrides
from mmflow.utils.fs import write_text_atomic

__all__ = ["PriorConfig", "class_items", "make_class_media", "prior_row_weights"]

logger = logging.getLogger("mmflow.tasks")

CLASS_STEM = "class_"  # generated items: class_00000.png, ...
PARTIAL = ".partial-"  # a file being written (hidden: no reader sees it)


@dataclass
class PriorConfig:
    """data.prior: DreamBooth's class items (prior preservation), made by train.init_from when missing."""

    path: str = field(metadata={
        "help": "class folder (made and topped up with the base model's items; captions: metadata.jsonl 'text')"})
    prompt: str = field(metadata={"help": "the class prompt the items are made from, e.g. 'a photo of a dog'"})
    num: int = field(default=100, metadata={"min": 1, "help": "class items wanted (DreamBooth: num_class_images)"})
    fraction: float = field(default=0.5, metadata={
        "min": 0.0, "max": 1.0, "min_exclusive": True, "max_exclusive": True,
        "help": "share of each batch's rows that are class items (rounded; at least one of each kind); "
                "DreamBooth's 1:1 is 0.5"})
    weight: float = field(default=1.0, metadata={
        "min": 0.0, "min_exclusive": True,
        "help": "prior_loss_weight: L = mean(instance rows) + weight * mean(class rows)"})
    sample: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "sample settings (steps, guidance, solver, seed, ...) over the base model's recipe sample "
                "section, for making the class items; item j is drawn from seed + j"})
    batch_size: int = field(default=16, metadata={"min": 1, "help": "class items sampled (and written) at once"})
    cache: str | None = field(default=None, metadata={
        "help": "folder of the class items' cache (`mmflow prepare` writes it); null: data.cache's folder + '-prior'"})

    def validate(self) -> None:
        check(self.path.strip() != "", "path", "must name the class folder")
        check(self.prompt.strip() != "", "prompt", "the class prompt must not be empty (e.g. 'a photo of a dog')")
        check_sample_overrides(self.sample, "data.prior.num")


def prior_row_weights(is_class: Tensor, weight: float) -> Tensor:
    """Row weights (B,) for a batch whose rows `is_class` (B,) bool are class items: 1 / n_instance on instance
    rows and weight / n_class on class rows, so sum_b r_b l_b = mean(instance l) + weight * mean(class l)
    (DreamBooth's loss + prior_loss_weight * prior_loss). A batch without one kind counts the other alone."""
    cls = is_class.bool()
    n_class = int(cls.sum())
    n_inst = cls.numel() - n_class
    inst_w = 1.0 / n_inst if n_inst else 0.0
    class_w = weight / n_class if n_class else 0.0
    return torch.where(cls, torch.full(cls.shape, class_w), torch.full(cls.shape, inst_w)).to(is_class.device)


def _index(folder: Path, extensions: tuple[str, ...]) -> CaptionIndex | None:
    """The class folder's items and captions; None when it does not exist or holds no media and no metadata."""
    if not folder.is_dir() or not ((folder / JSONL).is_file() or find_media(folder, extensions)):
        return None
    return load_captions(folder, extensions)


def class_items(folder: Path, extensions: tuple[str, ...]) -> list[MediaEntry]:
    """The usable items of a class folder (listed where it has metadata, present); [] for none."""
    index = _index(folder, extensions)
    return [] if index is None else [e for e in index.entries if e.problem is None]


def _remove_leftovers(folder: Path, extensions: tuple[str, ...]) -> None:
    """Files an interrupted generation left: hidden partial files, and generated files not yet listed."""
    if not folder.is_dir():
        return
    index = _index(folder, extensions)
    unlisted = {str(p) for p in index.uncaptioned} if index is not None and index.source == "jsonl" else set()
    for p in folder.iterdir():
        if p.name.startswith(PARTIAL) or (p.name.startswith(CLASS_STEM) and str(p) in unlisted):
            logger.warning("removed %s, left by an interrupted class-item generation", p)
            p.unlink()


def make_class_media(recipe: Any, device: torch.device) -> int:
    """Top the class folder data.prior.path up to data.prior.num items made by train.init_from's model from
    data.prior.prompt (see the module docstring); returns how many were made (0: the folder had enough)."""
    prior, d = recipe.data.prior, recipe.data
    spec, folder = d.spec, Path(prior.path)
    _remove_leftovers(folder, d.media_extensions)
    have = class_items(folder, d.media_extensions)
    missing = prior.num - len(have)
    if missing <= 0:
        logger.info("data.prior: %s holds %d class items (%d wanted): none made", folder, len(have), prior.num)
        return 0
    if have and not (folder / JSONL).is_file():
        raise ConfigError(f"{folder} holds {len(have)} items captioned without a top-level {JSONL}, and "
                          f"{missing} more are to be made and listed in one: give a folder captioned by {JSONL} "
                          f"(or an empty one), or set data.prior.num to {len(have)}", "data.prior.path")
    pipe = _base_pipeline(recipe, device)
    try:
        cfg = pipe.sample_config(**prior.sample)
    except ConfigError as e:
        raise ConfigError(e.message, f"data.prior.{e.key}" if e.key else "data.prior.sample") from e
    # the recipe's media size (image: size; video: size, frames; audio: seconds), whatever the base trained at
    size = {option: getattr(d, key) for option, key in spec.sample_options.items()}
    index = _index(folder, d.media_extensions)
    listed = {e.path.name for e in index.entries} if index is not None else set()  # missing files' names too
    logger.info("data.prior: making %d class items of %r with %s (%s x %d, guidance %g) into %s", missing,
                prior.prompt, recipe.train.init_from, cfg.solver, cfg.steps, cfg.guidance, folder)
    folder.mkdir(parents=True, exist_ok=True)
    j, made = len(have), 0
    while made < missing:
        n = min(prior.batch_size, missing - made)
        out = pipe(prior.prompt, num_per_prompt=n, seed=cfg.seed + j, sample_config=cfg, batch_size=n, **size)
        rows = []
        for item in out.media:  # (C, ...) each
            while f"{CLASS_STEM}{j:05d}{spec.suffix}" in listed:
                j += 1
            name = f"{CLASS_STEM}{j:05d}{spec.suffix}"
            tmp = spec.write(item, folder / f"{PARTIAL}{name}", fps=out.layout.fps, sample_rate=out.layout.sample_rate)
            os.replace(tmp, folder / name)  # whole, then listed: an unlisted one is a leftover (removed above)
            rows.append({"file_name": name, "text": prior.prompt})
            listed.add(name)
            j += 1
        old = (folder / JSONL).read_text() if (folder / JSONL).is_file() else ""
        old = old if not old or old.endswith("\n") else old + "\n"
        write_text_atomic(folder / JSONL, old + "".join(json.dumps(r) + "\n" for r in rows))
        made += n
    logger.info("data.prior: made %d class items in %s (%d in all)", made, folder, len(have) + made)
    del pipe
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the trained model is built next
    return made


def _base_pipeline(recipe: Any, device: torch.device) -> Any:
    """train.init_from as a FlowPipeline, after checking it makes the recipe's modality from text."""
    from mmflow.pipeline import FlowPipeline  # the pipeline imports the task registry: not at import time

    pipe = FlowPipeline.from_pretrained(recipe.train.init_from, device=device)
    base = pipe.recipe.data
    made = getattr(base, "modality", None) if pipe.task.input_kind == "text" else None
    if made != recipe.data.modality:
        what = f"makes {made} from text" if made else f"is a {pipe.task.name} model that takes no prompt"
        raise ConfigError(f"{recipe.train.init_from} {what}, but data.prior needs {recipe.data.modality} class items "
                          f"from the class prompt: the base must be a text-to-{recipe.data.modality} model",
                          "train.init_from")
    return pipe
