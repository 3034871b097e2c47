"""One trainer for every model and modality, on Hugging Face Accelerate.

Launch commands (the same code runs in all of them):
    mmflow train recipes/toy2d.yaml                                   # one process (CPU or one GPU)
    accelerate launch --multi_gpu --num_processes 8 -m mmflow train recipes/toy2d.yaml       # DDP, one node
    accelerate launch --multi_gpu --num_machines 2 --machine_rank 0 --num_processes 16 \\
        --main_process_ip HOST0 --main_process_port 29500 -m mmflow train recipes/toy2d.yaml  # node 0 of 2
On a CPU-only machine `--multi_gpu` with `train.device: cpu` (or no GPU) starts gloo processes that
average gradients (MULTI_CPU). With `train.sharding: fsdp2` the same launches shard the trained models over the
processes instead of copying them (mmflow/train/parallelize.py).

The trainer owns distribution, precision, accumulation, clipping, EMA, checkpoints and logging; the
task (mmflow.train.task) owns models, data and the loss. Randomness and data order are functions of
(seed, step), so a resumed run continues exactly and the result does not depend on how the global
batch is split across processes.
"""

from __future__ import annotations

import copy
import faulthandler
import json
import logging
import math
import shutil
import sys
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DistributedType
from accelerate.utils import set_seed
from safetensors.torch import load_file
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mmflow.config import ConfigError, dump_yaml, to_dict
from mmflow.errors import UserError
from mmflow.flow.loss import TBinStats
from mmflow.model_io import load_state_dict, load_weights_strict, save_model
from mmflow.models.compile import compile_decision, compile_module
from mmflow.train import checkpoint as ckpt
from mmflow.train import parallelize as fsdp2
from mmflow.train.config import Fsdp2Config, check_fsdp_plugin
from mmflow.train.ema import EMA
from mmflow.train.init_from import init_from
from mmflow.train.lora_training import LoraTraining, cast_frozen
from mmflow.train.lr import lr_at
from mmflow.train.precision import resolve_mixed_precision
from mmflow.train.random import BatchRandom
from mmflow.train.sampler import StreamBatchSampler
from mmflow.train.task import Task
from mmflow.utils.fs import atomic_folder, crash_point, recover_leftovers, write_json_atomic

logger = logging.getLogger("mmflow.train")
TEARDOWN_DUMP_S = 60.0  # a process-group teardown slower than this prints every thread's stack
T_BINS = 10  # bins of t for the logged per-t training loss
SHARDED_OPTIMIZER = "optimizer_full"  # + _<group>.pt: a sharded run's whole optimizer state, by parameter name


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    final_loss: float | None  # None: no loss was logged (e.g. the main optimizer never ran)
    metrics: dict[str, float | None] = field(default_factory=dict)  # None: a metric that was not finite
    loss_history: list[tuple[int, float]] = field(default_factory=list)


class NoUsableCheckpoint(UserError, RuntimeError):
    """--resume found no checkpoint that verifies and loads (the message lists each one and why)."""


class NonFiniteLoss(UserError, FloatingPointError):
    """A training loss came out NaN or inf (diverged settings or data); the step is named."""


class RunFolderHoldsCheckpoints(UserError, FileExistsError):
    """A fresh start was asked for in a run folder that holds complete checkpoints."""


def check_run_folder(run_dir: Path, resume: bool) -> None:
    """Refuse, before anything is written, a start that cannot be right for `run_dir`.

    --resume needs a complete checkpoint (a `step_*` with its MANIFEST; whether it verifies is checked
    when it is loaded); a fresh start needs a folder without one, so a finished or running run is never
    overwritten. Remains of saves that were cut short do not count: the trainer removes them.
    """
    root = run_dir / "checkpoints"
    complete = ckpt.complete_checkpoints(root)
    if resume and not complete:
        if not run_dir.is_dir():
            what = f"the run folder {run_dir} does not exist (no step_* checkpoint to resume from)"
        else:
            partial = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
            what = (f"{root} holds no complete checkpoint "
                    f"({'; '.join(f'{n}: a save that did not finish' for n in partial) or 'no step_* folders'})")
        raise NoUsableCheckpoint(f"--resume: {what}; start the run without --resume")
    if not resume and complete:
        raise RunFolderHoldsCheckpoints(
            f"{run_dir} already holds checkpoints (newest {complete[0].path.name}): pass --resume to continue it, "
            f"or choose another run folder (--run-dir or run_dir=...)")


def _read_json_or_none(path: Path) -> Any:
    """The JSON in `path`, or None when it is missing, unreadable or holds NaN/Infinity (not JSON)."""
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def make_accelerator(train_cfg: Any, run_dir: Path) -> Accelerator:
    """Accelerator for the recipe's device and precision (validated here, before any work)."""
    cuda = torch.cuda.is_available()
    if train_cfg.device == "cuda" and not cuda:
        raise ConfigError("train.device: 'cuda' was asked for but no CUDA device is available (use 'auto' or 'cpu')")
    cpu = train_cfg.device == "cpu" or not cuda
    return Accelerator(
        cpu=cpu,
        mixed_precision=resolve_mixed_precision(train_cfg.mixed_precision, cpu),
        log_with=list(train_cfg.trackers) or None,
        project_dir=str(run_dir),
    )


class Trainer:
    """Trains `task` as the recipe says, in `run_dir`.

    resume: continue from the newest good checkpoint. overfit_batch=N > 0: every batch is drawn from the
    same N examples (the seeds' "overfit one sample, then one batch" check), with fresh noise each step.
    """

    def __init__(self, recipe: Any, task: Task, run_dir: str | Path, resume: bool = False,
                 overfit_batch: int = 0, accelerator: Accelerator | None = None) -> None:
        self.recipe = recipe
        self.cfg = recipe.train
        self.task = task
        self.run_dir = Path(run_dir)
        # what the task keeps in the run folder by default (cache, reflow pairs) follows --run-dir too
        recipe.run_dir = task.recipe.run_dir = str(self.run_dir)
        self.resume = resume
        self.overfit_batch = overfit_batch
        self.accelerator = accelerator or make_accelerator(self.cfg, self.run_dir)
        if self.accelerator.distributed_type == DistributedType.FSDP:  # before any work, as the dry run refuses it
            check_fsdp_plugin(self.cfg, self.accelerator.num_processes)
        self.is_main = self.accelerator.is_main_process
        tokenizer = getattr(getattr(task, "encoders", None), "tokenizer_path", None)  # a latent task's, else None
        self.lora = (LoraTraining(self.cfg.lora, self.cfg.init_from, tokenizer) if self.cfg.lora is not None
                     else None)

    # ------------------------------------------------------------------ set-up
    def _setup_logging(self) -> None:
        if not self.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        root = logging.getLogger("mmflow")
        root.setLevel(logging.INFO)
        root.propagate = False  # our own console handler below; no second copy via the root logger
        log_path = self.run_dir / "train.log"
        if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == log_path.resolve() for h in root.handlers):
            fh = logging.FileHandler(log_path)
            fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            root.addHandler(fh)
        if not any(getattr(h, "_mmflow_console", False) for h in root.handlers):
            sh = logging.StreamHandler(sys.stderr)
            sh.setFormatter(logging.Formatter("[mmflow] %(message)s"))
            sh._mmflow_console = True  # type: ignore[attr-defined]
            root.addHandler(sh)
        dump_yaml(self.recipe, self.run_dir / "recipe.yaml")  # the resolved recipe

    def _build(self) -> None:
        acc = self.accelerator
        set_seed(self.recipe.seed)  # identical initial weights on every rank
        models = self.task.build_models()
        # a resumed run loads its own checkpoint, except a LoRA run's base weights: its checkpoints hold none
        if not self.resume or self.lora is not None:
            if self.cfg.init_from:
                init_from(models, Path(self.cfg.init_from))
            self.task.start_models(models, acc.device)  # a checkpoint being resumed holds what it measures
        self.groups = self.task.optimizer_groups(models)
        trained = list(dict.fromkeys(n for names in self.groups.values() for n in names))
        unknown = set(trained) - set(models)
        if unknown:
            raise ValueError(f"task {self.task.name}: optimizer groups name unknown models {sorted(unknown)}")
        if self.lora is not None:  # before the optimizers: they get the adapters only
            self.lora.attach(models, trained)
            cast_frozen(models[self.lora.model_name], self.cfg.frozen_dtype)
            acc.register_save_state_pre_hook(LoraTraining.adapter_only)
        self.model_names = list(models)
        sharded_emas = self._shard(models, trained)  # before the optimizers: they must see the sharded parameters
        optimizers = {}
        for gname, names in self.groups.items():
            decay, no_decay = [], []
            for n in names:
                for p in models[n].parameters():
                    if p.requires_grad:
                        (decay if p.ndim >= 2 else no_decay).append(p)
            optimizers[gname] = torch.optim.AdamW(
                [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                lr=self.cfg.lr, betas=tuple(self.cfg.betas), eps=self.cfg.eps,
            )
        # sharded models and their optimizer stay out of accelerate (it would wrap them in DDP and save one rank's
        # shards): the trainer checkpoints them itself (save_checkpoint, _load_checkpoint)
        plain = [n for n in models if n not in self.sharded]
        to_prepare = [*(models[n] for n in plain), *([] if self.sharded else optimizers.values())]
        prepared = acc.prepare(*to_prepare) if to_prepare else ()
        if not isinstance(prepared, (tuple, list)):
            prepared = (prepared,)
        self.models: dict[str, nn.Module] = {**models, **dict(zip(plain, prepared[: len(plain)]))}
        self.optimizers = optimizers if self.sharded else dict(zip(optimizers, prepared[len(plain):]))
        ema_names = self.task.ema_models(models) if self.cfg.ema_decay else []
        self.emas = {n: sharded_emas.get(n) or EMA(acc.unwrap_model(self.models[n]), self.cfg.ema_decay,
                                                   self.cfg.ema_warmup) for n in ema_names}
        self._compile()  # after the EMA copies: their shadows stay eager
        self.task.place_frozen_models(acc.device)  # untrained parts: moved once, never wrapped
        self.dataset = self.task.build_dataset()

    def _compile(self) -> None:
        """train.compile: compile the forward of the model the task names (task.compiled_model) in place
        (mmflow/models/compile.py; its state_dict keys, hence checkpoints and exports, stay the eager ones), and
        log what was decided and why."""
        name = self.task.compiled_model()
        if name is None or name not in self.models:
            if self.cfg.compile is True and self.is_main:
                logger.warning("compile: eager (train.compile: true, but task %s names no model to compile)",
                               self.task.name)
            return
        # MeanFlow's JVP runs the bare module's eager forward (mmflow/flow/meanflow.py), so it compiles too
        blocker = "sharding fsdp2 with compile is untested" if self.sharded else None
        model = self.accelerator.unwrap_model(self.models[name])
        on, why = compile_decision(self.cfg.compile, self.accelerator.device, model, "train.compile", blocker)
        if on:
            compile_module(model)
        if self.is_main:
            logger.info("compile: %s (%s)", f"{name} ({type(model).__name__}) compiled, on its first step"
                        if on else "eager", why)

    def _shard(self, models: dict[str, nn.Module], trained: list[str]) -> dict[str, EMA]:
        """train.sharding fsdp2 over several processes: parallelize the trained models in place and keep rank 0 a
        whole CPU copy of each (exports and validation load the gathered weights into it). Returns the EMAs of the
        sharded models, sharded alike (so every rank updates only its shard). Sets self.sharded (names; [] = none)."""
        acc = self.accelerator
        self.sharded: list[str] = []
        self.whole_copies: dict[str, nn.Module] = {}
        if self.cfg.sharding != "fsdp2" or acc.num_processes == 1:
            return {}
        self._check_sharding(models, trained)
        mesh = init_device_mesh(acc.device.type, (acc.num_processes,))  # 1-D: every process holds 1/N
        keep_ema = set(self.task.ema_models(models)) if self.cfg.ema_decay else set()
        emas = {}
        for n in trained:
            ema = EMA(models[n], self.cfg.ema_decay, self.cfg.ema_warmup) if n in keep_ema else None
            if self.is_main:
                self.whole_copies[n] = copy.deepcopy(models[n]).requires_grad_(False)
            fsdp2.parallelize(models[n], mesh, self.cfg.fsdp2 or Fsdp2Config())
            if ema is not None:
                fsdp2.shard_like(ema.shadow, models[n], ema.tracked)
                emas[n] = ema
        self.sharded = list(trained)
        return emas

    def _check_sharding(self, models: dict[str, nn.Module], trained: list[str]) -> None:
        """Refuse, naming train.sharding, what fsdp2 does not support."""
        why = None  # under accelerate's FSDP plugin the run stopped earlier (check_fsdp_plugin in __init__)
        if len(self.groups) > 1:
            why = f"one optimizer is supported; task {self.task.name} steps {list(self.groups)} (use sharding: none)"
        elif not any(fsdp2.has_units(models[n]) for n in trained):
            why = f"it shards MM-DiT blocks; task {self.task.name} trains none (use sharding: none)"
        elif self.task.jvp_training() is not None:
            why = f"{self.task.jvp_training()}, untested through sharded blocks (use sharding: none)"
        if why is not None:
            raise ConfigError(f"fsdp2: {why}", "train.sharding")

    def _no_sync(self, name: str) -> Any:
        """Hold back the gradient averaging of model `name` for a micro-batch (DDP's no_sync or FSDP2's)."""
        return fsdp2.no_sync(self.models[name]) if name in self.sharded else self.accelerator.no_sync(self.models[name])

    def _whole(self, module: nn.Module, name: str) -> nn.Module | None:
        """`module` (model `name` or its EMA shadow) whole and bare: a sharded one is gathered into rank 0's CPU
        copy (a collective: every rank calls it; the others get None)."""
        if name not in self.sharded:
            return self.accelerator.unwrap_model(module)
        state = fsdp2.full_state_dict(module)
        if not self.is_main:
            return None
        self.whole_copies[name].load_state_dict(state)
        return self.whole_copies[name]

    def _dataloader(self, start_micro: int) -> tuple[Any, Any]:
        acc = self.accelerator
        sampler = None if self.overfit_batch else self.task.batch_sampler(
            self.dataset, self.cfg.batch_size, acc.process_index, acc.num_processes, self.recipe.seed, start_micro)
        if sampler is None:
            sampler = StreamBatchSampler(
                len(self.dataset), self.cfg.batch_size, acc.process_index, acc.num_processes, self.recipe.seed,
                start=start_micro, overfit=self.overfit_batch,
            )
        loader = DataLoader(self.dataset, batch_sampler=sampler, collate_fn=self.task.collate,
                            num_workers=self.cfg.num_workers, persistent_workers=self.cfg.num_workers > 0)
        return sampler, iter(loader)

    def _t_bin_logs(self) -> dict[str, float]:
        """The main loss per t-bin since the last log line, over all ranks (the seeds' "loss per t"
        diagnostic; trackers only): loss_t0 .. loss_t9 for the bins that saw examples. Resets the bins."""
        acc, bins = self.accelerator, self._t_bins
        if not int(bins.counts.sum()):
            return {}
        both = torch.stack([bins.sums, bins.counts.double()]).to(acc.device)  # (2, T_BINS), one collective
        sums, counts = acc.reduce(both, "sum").cpu()
        bins.reset()
        return {f"loss_t{k}": float(sums[k] / counts[k]) for k in range(bins.n_bins) if counts[k] > 0}

    # ------------------------------------------------------------------ checkpoints
    def _trainer_state(self, step: int, loss_window: list[float]) -> dict[str, Any]:
        acc = self.accelerator
        return {
            "step": step,
            "global_batch": self.cfg.batch_size * acc.num_processes,
            "grad_accum": self.cfg.grad_accum,
            "num_processes": acc.num_processes,
            "sharding": "fsdp2" if self.sharded else "none",  # how the model and optimizer states below were saved
            "ema_updates": {n: e.num_updates for n, e in self.emas.items()},
            "overfit_batch": self.overfit_batch,
            "task_counters": self.task.counters_state(),  # rank 0's counts; other ranks restart theirs from zero
            "loss_history": [[s, loss] for s, loss in self.loss_history],
            "loss_window": loss_window,  # the losses since the last log line, averaged over ranks
        }

    def _export_models(self, dest: Path) -> None:
        """dest/models/ and dest/pipeline.json (every rank calls it: sharded models are gathered; rank 0 writes)."""
        save = save_model if self.lora is None else self.lora.save  # a LoRA run: its adapters only
        for folder, module, n in [*((n, self.models[n], n) for n in self.model_names),
                                  *((f"{n}_ema", e.shadow, n) for n, e in self.emas.items())]:
            whole = self._whole(module, n)
            if self.is_main:
                save(whole, dest / "models" / folder)
        if not self.is_main:
            return
        # the frozen components go inside too (main process only), so the folder samples where it is copied;
        # a LoRA run's base holds them, and its export points there (but for a tokenizer of its own)
        components = (self.task.export_frozen(dest / "models") if self.lora is None
                      else self.lora.export_components(dest / "models"))
        # the recipe rides along once, here, so a sampler can rebuild the task without the recipe file
        info = {**self.task.pipeline_info(), "recipe": to_dict(self.recipe)}
        if self.lora is not None:
            info.update(self.lora.pipeline_info())
        write_json_atomic(dest / "pipeline.json", {**info, "components": components} if components else info)

    def _export_model_folder(self, checkpoint: Path) -> None:
        """model/ <- the models and pipeline.json of `checkpoint` (main process), replaced atomically."""
        with atomic_folder(self.run_dir / "model") as out:  # the last good exported model
            shutil.copytree(checkpoint / "models", out / "models")
            shutil.copy2(checkpoint / "pipeline.json", out / "pipeline.json")
            crash_point("export")

    def save_checkpoint(self, step: int) -> Path:
        """Save full state after `step` optimizer steps (all ranks call this; rank 0 writes the shared files)."""
        acc = self.accelerator
        root = self.run_dir / "checkpoints"
        tmp = root / ckpt.tmp_dir_name(step)
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp), safe_serialization=True)
        window = self._loss_window  # each rank's own losses; the mean over ranks is stored (a collective)
        if window:
            window = acc.reduce(torch.tensor(window, dtype=torch.float64, device=acc.device), "mean").tolist()
        acc.wait_for_everyone()
        self._export_models(tmp)  # models/ first: a sharded model's whole weights are its checkpoint too
        for gname, opt in self.optimizers.items() if self.sharded else ():
            state = fsdp2.full_optimizer_state({n: self.models[n] for n in self.sharded}, opt)
            if self.is_main:
                torch.save(state, tmp / f"{SHARDED_OPTIMIZER}_{gname}.pt")
        dest = root / ckpt.step_dir_name(step)
        if self.is_main:
            write_json_atomic(tmp / "trainer_state.json", self._trainer_state(step, window))
            crash_point("checkpoint")
            dest = ckpt.finalize(tmp, root, step)
            ckpt.prune(root, self.cfg.keep_checkpoints)
            self._export_model_folder(dest)
            logger.info("checkpoint step %d -> %s", step, dest)
        acc.wait_for_everyone()
        return dest

    def load_newest_checkpoint(self) -> int:
        """Load the newest intact checkpoint; corrupt or partial ones are reported and skipped."""
        root = self.run_dir / "checkpoints"
        refs = ckpt.list_checkpoints(root)
        tried = []
        for ref in refs:
            reason = ckpt.verify_checkpoint(ref.path)
            if reason is None:
                try:
                    self._load_checkpoint(ref.path)
                    if tried:
                        logger.warning("skipped unusable checkpoints: %s", "; ".join(tried))
                    logger.info("resumed from %s (step %d)", ref.path, ref.step)
                    self.resumed_from, self._resumed_newest = ref.path, not tried
                    return ref.step
                except Exception as e:  # a file that verifies but does not load is as bad as a missing one
                    reason = f"failed to load: {type(e).__name__}: {e}"
            tried.append(f"{ref.path.name}: {reason}")
            logger.warning("checkpoint %s is unusable (%s); trying an older one", ref.path, reason)
        detail = "; ".join(tried) if tried else "no step_* folders"
        raise NoUsableCheckpoint(f"--resume: no usable checkpoint in {root} ({detail}); to start afresh, "
                                 f"move {root} away or choose another run folder (--run-dir or run_dir=...)")

    def _load_checkpoint(self, path: Path) -> None:
        state = json.loads((path / "trainer_state.json").read_text())
        saved, mine = state.get("sharding", "none"), "fsdp2" if self.sharded else "none"
        if saved != mine:
            raise ConfigError(f"{path.name} was written with sharding {saved}, this run shards {mine}: resume with "
                              f"the sharding that wrote it", "train.sharding")
        if self.lora is None:
            self.accelerator.load_state(str(path))  # RNG states, and the models and optimizers it prepared
        else:
            self.lora.load_state(self.accelerator, self.models[self.lora.model_name], path)
        for n in self.sharded:  # every rank reads the whole weights (shared storage) and keeps its shard
            fsdp2.load_full_state_dict(self.models[n], load_state_dict(path / "models" / n))
        for gname, opt in self.optimizers.items() if self.sharded else ():
            fsdp2.load_full_optimizer_state({n: self.models[n] for n in self.sharded}, opt,
                                            torch.load(path / f"{SHARDED_OPTIMIZER}_{gname}.pt", weights_only=True))
        for n, e in self.emas.items():
            if self.lora is not None:
                self.lora.load(e.shadow, path / "models" / f"{n}_ema")
            elif n in self.sharded:
                fsdp2.load_full_state_dict(e.shadow, load_state_dict(path / "models" / f"{n}_ema"))
            else:
                load_weights_strict(e.shadow, load_file(str(path / "models" / f"{n}_ema" / "model.safetensors")),
                                    str(path))
            if n not in self.sharded:
                e.shadow.to(self.accelerator.device)
            e.num_updates = state["ema_updates"][n]
        if self.is_main:  # older checkpoints kept the counters at the top level
            self.task.load_counters_state(state.get("task_counters", state))
        # older checkpoints have neither: the history then starts at the resume
        self.loss_history = [(int(s), float(loss)) for s, loss in state.get("loss_history", [])]
        self._loss_window = [float(v) for v in state.get("loss_window", [])]
        gb = self.cfg.batch_size * self.accelerator.num_processes
        if state["global_batch"] != gb:
            logger.warning("global batch changed from %d to %d: data order after resume differs from the original run",
                           state["global_batch"], gb)

    # ------------------------------------------------------------------ task counters
    def _observe(self, batch: Any) -> Any:
        """Show a collated micro-batch to the task (each rank its own; it may stop the run), then move it
        to the device."""
        self.task.observe_batch(batch)
        return _to_device(batch, self.accelerator.device)

    def _counter_metrics(self) -> dict[str, float]:
        """The task's counters summed over ranks (a collective: every rank calls it), as the task reports
        them; its paragraph is logged on the main process."""
        acc = self.accelerator
        local = self.task.counters()
        totals: dict[str, float] = {}
        if local:  # float64: exact counts up to 2**53
            summed = acc.reduce(torch.tensor(list(local.values()), dtype=torch.float64, device=acc.device), "sum")
            totals = dict(zip(local, summed.tolist()))
        report = self.task.report(totals)
        if report.text and self.is_main:
            logger.info("%s", report.text)
        return report.metrics

    # ------------------------------------------------------------------ loop
    def _eval_models(self) -> dict[str, nn.Module]:
        """The models validation uses (EMA weights where kept), whole, on the device. Every rank calls it (sharded
        ones are gathered); only the main process's are complete. _release_eval_models() after use."""
        out = {}
        for n in self.model_names:
            whole = self._whole(self.emas[n].shadow if n in self.emas else self.models[n], n)
            if whole is not None:
                out[n] = whole.to(self.accelerator.device) if n in self.sharded else whole
        return out

    def _release_eval_models(self) -> None:
        """Back to the CPU with rank 0's whole copies of sharded models: the device memory is the shards'."""
        for m in self.whole_copies.values():
            m.to("cpu")

    def finish_models(self) -> None:
        """Let the task finish its models before the final save (e.g. measure a tokenizer's latent statistics).

        Runs on the main process, on the models that are exported (EMA weights where kept), in eval mode. Under
        train.sharding fsdp2 it gets whole copies, so what it changes is not kept (no task with MM-DiTs changes any).
        """
        models = self._eval_models()
        if self.is_main:
            was_training = {n: m.training for n, m in models.items()}
            for m in models.values():
                m.eval()
            with torch.no_grad():
                self.task.finish_models(models, self.dataset, self.accelerator.device)
            for n, m in models.items():
                m.train(was_training[n])
        self._release_eval_models()
        self.accelerator.wait_for_everyone()

    def validate(self, step: int) -> dict[str, float]:
        metrics: dict[str, float] = {}
        models = self._eval_models()
        if self.is_main:
            was_training = {n: m.training for n, m in models.items()}
            for m in models.values():
                m.eval()
            out_dir = self.run_dir / "validation" / ckpt.step_dir_name(step)
            out_dir.mkdir(parents=True, exist_ok=True)
            # a bf16 frozen base computes only under autocast (its fp32 adapters and inputs meet bf16 weights)
            half_base = self.cfg.frozen_dtype != "float32"
            with torch.no_grad(), (self.accelerator.autocast() if half_base else nullcontext()):
                metrics = self.task.validate(models, out_dir, step, self.accelerator.device)
            for n, m in models.items():
                m.train(was_training[n])
            crash_point("validation")
            unknown = sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
            if unknown:  # NaN is not JSON, and a number it is not: the metric is unknown
                logger.warning("validation step %d: %s not finite; written as null", step, ", ".join(unknown))
                metrics = {k: None if k in unknown else v for k, v in metrics.items()}
            write_json_atomic(out_dir / "metrics.json", metrics)  # written last: its presence means done
            known = {k: v for k, v in metrics.items() if v is not None}
            if known:
                self.accelerator.log({f"val/{k}": v for k, v in known.items()}, step=step)
                logger.info("validation step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in known.items()))
        self._release_eval_models()
        self.accelerator.wait_for_everyone()
        return metrics

    def _validation_metrics(self, step: int) -> dict[str, float | None] | None:
        """The metrics of a validation at `step` that finished earlier, or None."""
        metrics = _read_json_or_none(self.run_dir / "validation" / ckpt.step_dir_name(step) / "metrics.json")
        return metrics if isinstance(metrics, dict) else None

    def _finished_metrics(self) -> dict[str, Any] | None:
        """metrics.json of a run that already finished at max_steps (it is written last), or None."""
        kept = _read_json_or_none(self.run_dir / "metrics.json")
        if isinstance(kept, dict) and kept.get("step") == self.cfg.max_steps and "final_loss" in kept:
            return kept
        return None

    def _recover_run_folder(self) -> None:
        """Undo what a kill of an earlier process left in the run folder, naming each thing in the log:
        atomic writes cut short (model/ is restored if the kill fell between its two renames) and
        checkpoint saves that did not finish."""
        if self.is_main:
            folders = [self.run_dir, *sorted(p for p in (self.run_dir / "validation").glob("step_*") if p.is_dir())]
            actions = [a for f in folders for a in recover_leftovers(f)]
            actions += ckpt.remove_incomplete(self.run_dir / "checkpoints")
            for action in actions:
                logger.warning("cleaned up after an interrupted run: %s", action)
        self.accelerator.wait_for_everyone()

    def train(self) -> TrainResult:
        acc = self.accelerator
        check_run_folder(self.run_dir, self.resume)  # before anything is written
        self._setup_logging()
        self._recover_run_folder()
        if self.is_main:  # e.g. class items made by the base model: before the trained model takes the memory
            self.task.prepare_data(acc.device)
        acc.wait_for_everyone()
        self._build()
        if self.is_main:
            precision = acc.mixed_precision + ("" if acc.mixed_precision == self.cfg.mixed_precision else
                                               f" (train.mixed_precision {self.cfg.mixed_precision})")
            logger.info("run %s: %d process(es), device %s, precision %s, global batch %d x accum %d%s",
                        self.run_dir, acc.num_processes, acc.device, precision,
                        self.cfg.batch_size * acc.num_processes, self.cfg.grad_accum,
                        f", {', '.join(self.sharded)} sharded (fsdp2)" if self.sharded else "")
        self.loss_history: list[tuple[int, float]] = []
        self._loss_window: list[float] = []  # this rank's main losses since the last log line
        self._t_bins = TBinStats(T_BINS)  # this rank's main per-example losses by t since the last log line
        start = self.load_newest_checkpoint() if self.resume else 0
        final = self.cfg.max_steps
        every = self.cfg.validate_every
        # decided by every rank from the same files before any of them is written again
        kept = self._finished_metrics() if self.resume and start == final else None
        earlier = self._validation_metrics(start) if self.resume and start else None
        redo_validation = bool(self.resume and 0 < start < final and every and start % every == 0 and earlier is None)
        acc.wait_for_everyone()
        if self.resume and self.is_main:
            if self._resumed_newest:  # pruning is safe only when the newest complete one loaded
                ckpt.prune(self.run_dir / "checkpoints", self.cfg.keep_checkpoints)
            # model/ is the export of the checkpoint the run continues from; a kill may have cut it short
            if not ckpt.export_matches(self.resumed_from, self.run_dir / "model"):
                self._export_model_folder(self.resumed_from)
                logger.info("model/ exported again from %s", self.resumed_from)
        if kept is not None:
            if self.is_main:
                logger.info("the run had finished at step %d: its results in %s are kept", final,
                            self.run_dir / "metrics.json")
            end_processes(acc)
            return TrainResult(self.run_dir, final, kept["final_loss"],
                               {k: v for k, v in kept.items() if k not in ("step", "final_loss")}, self.loss_history)
        if self.cfg.trackers:
            acc.init_trackers("tb", config={"seed": self.recipe.seed, "lr": self.cfg.lr, "batch_size": self.cfg.batch_size})
        if redo_validation:  # the kill fell in the validation that follows this checkpoint
            self.validate(start)
        accum = self.cfg.grad_accum
        _, data = self._dataloader(start * accum)
        for m in self.models.values():
            m.train()
        window = self._loss_window
        t0 = time.time()
        # a context manager: closed on an error too, so the error message starts a line of its own
        with tqdm(total=self.cfg.max_steps, initial=start, disable=not self.is_main, desc="train",
                  dynamic_ncols=True) as progress:
            for step in range(start, self.cfg.max_steps):
                batches = [self._observe(next(data)) for _ in range(accum)]
                lr = lr_at(step, self.cfg.lr, self.cfg.warmup_steps, self.cfg.max_steps, self.cfg.min_lr_ratio)
                logs: dict[str, float] = {"lr": lr}
                carry: list[dict[str, torch.Tensor]] = [{} for _ in batches]  # LossOutput.extras of the group stepped last
                for gi, (gname, names) in enumerate(self.groups.items()):
                    if not self.task.optimizer_active(gname, step):
                        continue
                    opt = self.optimizers[gname]
                    for n in names:  # an earlier group's backward may have reached these models (GAN: D in G's loss)
                        self.models[n].zero_grad(set_to_none=True)
                    for group in opt.param_groups:
                        group["lr"] = lr
                    group_loss, extras = 0.0, []
                    for mi, batch in enumerate(batches):
                        rng = BatchRandom(self.recipe.seed, step, gi, mi * acc.num_processes + acc.process_index,
                                          self.cfg.batch_size, accum * acc.num_processes, acc.device)
                        with ExitStack() as stack:
                            # all-reduce only this group's gradients, after its last micro-batch: another group's
                            # model computed with here (a GAN's frozen discriminator) must not arm DDP's reducer
                            for n in self.models:
                                if n not in names or mi < accum - 1:
                                    stack.enter_context(self._no_sync(n))
                            handed = {"carry": carry[mi]} if carry[mi] else {}
                            with acc.autocast():
                                out = self.task.loss(self.models, batch, rng, gname, step, **handed)
                            if not torch.isfinite(out.loss):
                                raise NonFiniteLoss(
                                    f"step {step + 1}: the {gname} loss is {out.loss.item()} (not finite); training "
                                    f"stopped before the update. Checkpoints already written are intact (--resume "
                                    f"continues from them); try a lower train.lr, a train.grad_clip, or "
                                    f"train.mixed_precision: no")
                            acc.backward(out.loss / accum)
                        extras.append(out.extras)
                        if gi == 0 and out.per_example is not None and out.t is not None:
                            self._t_bins.update(out.per_example, out.t)
                        group_loss += out.loss.detach().float().item() / accum
                        for k, v in out.logs.items():
                            logs[f"{gname}/{k}"] = logs.get(f"{gname}/{k}", 0.0) + v / accum
                    if self.cfg.grad_clip is not None:
                        params = [p for n in names for p in self.models[n].parameters()]
                        norm = (fsdp2.clip_grad_norm(params, self.cfg.grad_clip) if self.sharded
                                else acc.clip_grad_norm_(params, self.cfg.grad_clip))
                        logs[f"{gname}/grad_norm"] = float(norm)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    logs[f"{gname}/loss"] = group_loss
                    carry = extras
                for n, e in self.emas.items():
                    e.update(acc.unwrap_model(self.models[n]))
                main_key = f"{next(iter(self.groups))}/loss"
                if main_key in logs:  # the main optimizer ran this step (every rank decides alike)
                    window.append(logs[main_key])
                done = step + 1
                if window and (done % self.cfg.log_every == 0 or done == self.cfg.max_steps):
                    mean = acc.reduce(torch.tensor(sum(window) / len(window), device=acc.device), "mean").item()
                    window.clear()
                    self.loss_history.append((done, mean))
                    logs["loss_avg"] = mean
                    logs.update(self._t_bin_logs())
                    logs["steps_per_s"] = (done - start) / max(1e-9, time.time() - t0)
                    acc.log(logs, step=done)
                    if self.is_main:
                        progress.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}")
                        logger.info("step %d loss %.5f lr %.3e", done, mean, lr)
                progress.update(1)
                crash_point("step")
                if done == self.cfg.max_steps:
                    self.finish_models()
                if done % self.cfg.checkpoint_every == 0 or done == self.cfg.max_steps:
                    self.save_checkpoint(done)
                if self.cfg.validate_every and done % self.cfg.validate_every == 0 and done != self.cfg.max_steps:
                    self.validate(done)
        # resumed at the end: the final validation is done again only if its metrics were never written
        metrics = earlier if start == final and earlier is not None else self.validate(final)
        metrics = {**metrics, **self._counter_metrics()}
        last_loss = self.loss_history[-1][1] if self.loss_history else None  # null in JSON, never NaN
        if self.is_main:
            write_json_atomic(self.run_dir / "metrics.json", {"step": final, "final_loss": last_loss, **metrics})
        end_processes(acc)
        return TrainResult(self.run_dir, final, last_loss, metrics, self.loss_history)


def end_processes(acc: Accelerator) -> None:
    """Close the trackers and tear the process group down, every rank together (a rank leaving early can abort
    the other). Process-group teardown has been seen to stall on rare occasions (pytorch#75097): if it takes
    over TEARDOWN_DUMP_S, every thread's stack goes to stderr so the stall can be placed."""
    acc.wait_for_everyone()
    watched = acc.num_processes > 1
    if watched:
        faulthandler.dump_traceback_later(TEARDOWN_DUMP_S, exit=False)
    try:
        acc.end_training()
    finally:
        if watched:
            faulthandler.cancel_dump_traceback_later()
