"""`mmflow prepare`: precompute a media recipe's latents and text embeddings into the cache.

Each item is stored as its `MediaEncoders.cache_fields` (mmflow/tasks/encoders.py, the one place that
knows their names): the tokenizer's posterior mean and std (so training still samples z ~ q(z|x)) or,
without a tokenizer, the media tensor itself, plus every text encoder's tokens, mask and pooled vector.
The cache's `describe` names everything those values depend on: the tokenizer's and encoders' weights,
the preprocessing settings and the media files (size, mtime), so a change to any of them makes the
cache stale with the reason spelled out.

    mmflow prepare recipes/emoji_image.yaml
    accelerate launch --multi_gpu --num_processes 8 -m mmflow prepare recipes/emoji_image.yaml
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmflow.data.bad_items import BadDataError, BadMedia
from mmflow.data.cache import CacheWriter, read_index
from mmflow.data.media_folder import MediaFolderDataset
from mmflow.tasks.encoders import MediaEncoders

logger = logging.getLogger("mmflow.tasks")

# per-item tensors of the raw items cached beside the encodings (audio's timing: mmflow/modalities/audio.py)
CACHED_EXTRAS = ("timing",)

# the data settings a cached tensor depends on (not: paths of the cache, bad-item limits, timeouts)
PREPROCESSING_KEYS = ("modality", "captions", "text_field", "extensions", "size", "crop", "frames", "stride", "fps",
                      "clip_start", "short_clips", "sample_rate", "seconds", "channels", "silence_threshold")


def cache_describe(recipe: Any, dataset: MediaFolderDataset, encoders: MediaEncoders) -> dict[str, Any]:
    """Everything the cached values of `recipe` depend on (see mmflow.data.cache): the encoders' part
    ("tokenizer", "text") and the data's."""
    d = recipe.data
    root = Path(d.path)
    files = {}
    for e in dataset.entries:
        try:
            st = e.path.stat()
            files[os.path.relpath(e.path, root)] = [st.st_size, st.st_mtime_ns, e.text]
        except OSError:
            files[str(e.path)] = None  # missing: a bad item now, maybe not later
    return {
        "format": "text_to_media/1",
        **({"extras": list(CACHED_EXTRAS)} if d.modality == "audio" else {}),  # caches from before lack timing
        # random crops and clip starts of epoch 0 are frozen into the cache; deterministic reads do not depend on
        # the seed, so a second seed of a recipe trains from the same cache (as it does where prepare_cache
        # found that no item had a choice: the cache is then independent of "seed")
        **({"seed": recipe.seed} if d.reads_randomly else {}),
        **encoders.describe(),
        "data": {k: getattr(d, k) for k in PREPROCESSING_KEYS},
        "files": files,
    }


@dataclass
class PrepareResult:
    folder: Path
    cached: int
    skipped: list[tuple[str, str]]


def prepare_cache(task: Any, accelerator: Any, batch_size: int = 16) -> PrepareResult:
    """Encode every item of the task's media folder into its cache (every rank a share; rank 0 publishes)."""
    acc = accelerator
    raw = task.raw_dataset()
    if task.recipe.data.reads_randomly:
        logger.warning("data.crop or data.clip_start is random: the cache freezes each item's epoch-0 crop and "
                       "clip start (no augmentation) and holds for this seed only, unless no item has a choice")
    writer = CacheWriter(task.cache_dir(), task.describe(raw), rank=acc.process_index, world_size=acc.num_processes)
    if acc.is_main_process:
        writer.begin()
    acc.wait_for_everyone()
    encoders = task.encoders.to(acc.device)
    mine = list(range(acc.process_index, len(raw), acc.num_processes))
    skipped: list[tuple[str, str]] = []
    cached = 0
    for lo in range(0, len(mine), batch_size):
        items = []
        for i in mine[lo: lo + batch_size]:
            try:
                items.append(raw.load(i))
            except BadMedia as exc:
                skipped.append((str(raw.entries[i].path), exc.reason))
                writer.add_skipped(*skipped[-1])
                logger.warning("skipped bad media %s (%s)", raw.entries[i].path, exc.reason)
        if not items:
            continue
        media = torch.stack([it["media"] for it in items]).to(acc.device)  # (b, *media_shape)
        fields = encoders.cache_fields(media, [it["text"] for it in items])  # {name: (b, ...)}
        fields.update({k: torch.stack([it[k] for it in items]) for k in CACHED_EXTRAS if k in items[0]})
        for k, it in enumerate(items):
            writer.add(it["index"], {name: t[k] for name, t in fields.items()})
            cached += 1
    if task.recipe.data.reads_randomly and raw.random_draws == 0:
        # every item was exactly the recipe's size and length: no crop or clip start had a choice
        writer.independent_of(["seed"])
    writer.close()
    totals = acc.reduce(torch.tensor([cached, len(skipped)], device=acc.device), "sum").tolist()
    acc.wait_for_everyone()
    limit = task.recipe.data.max_bad_fraction
    if totals[1] > limit * (totals[0] + totals[1]):
        raise BadDataError(f"{totals[1]} of {totals[0] + totals[1]} media items are bad, more than "
                           f"data.max_bad_fraction = {limit:g}; first: {skipped[:5]} (the cache was not written)")
    folder = writer.finalize() if acc.is_main_process else writer.folder
    acc.wait_for_everyone()
    if task.recipe.data.reads_randomly and "seed" in (read_index(folder) or {}).get("independent_of", []):
        logger.info("no item had a choice of crop or clip start (each is the recipe's size and length): the "
                    "cache %s holds for every seed", folder)
    return PrepareResult(folder, int(totals[0]), skipped)
