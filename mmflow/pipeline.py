"""A saved flow model, ready to sample: run folder / checkpoint / export folder -> FlowPipeline.

A folder with `pipeline.json` (written beside the exported models at every checkpoint) holds the
recipe that trained it and, under models/, every component sampling needs: the velocity model and
the frozen tokenizer and text encoders (copied at export, or referenced by path plus fingerprint for
a very large encoder, see mmflow.tasks.encoders). So a copied folder samples on another machine.
Everything is verified before use: a checkpoint against its MANIFEST (sha256 of every file), every
JSON file parsed, every weight finite; a run whose `model/` export is broken falls back to its newest
intact checkpoint and says so.

    pipe = FlowPipeline.from_pretrained("runs/emoji_image/model")   # a local folder: nothing downloads
    out = pipe(["a red heart", "a cat face"], num_per_prompt=4, seed=0, guidance=4.0, steps=16)
    out.media                                   # (8, 3, 32, 32) in [-1, 1]; video (B, 3, T, H, W); audio (B, C, N)
    pipe.save(out, "samples/")                  # sample_0000.png ... + samples.png + samples.json
    pipe.save_pretrained("exported/emoji")      # a self-contained copy
    pipe.load_lora("runs/emoji_style", scale=0.8)  # a LoRA adapter (train.lora); save_pretrained merges it
    FlowPipeline.from_pretrained(folder, device="cuda", compile=True)  # torch.compile; default auto: MM-DiTs on CUDA

Sample i's noise is drawn from seed + i alone, and its file records that seed, the prompt, the
sampler settings and the model's fingerprint: the same call gives the same output bit for bit on CPU.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

import mmflow.builtin_models  # noqa: F401  (pipeline.json's models may be of any built-in type)
from mmflow import __version__
from mmflow.config import ConfigError, apply_overrides, from_dict, to_dict
from mmflow.errors import MissingInput, UserError
from mmflow.modalities import get_modality
from mmflow.model_io import CorruptModel, load_model, read_json_object, save_model
from mmflow.models.compile import CompileSetting, compile_decision, compile_module
from mmflow.models.lora import ADAPTER_CONFIG, is_adapter_folder, load_adapter, merged_copy
from mmflow.recipe import Recipe
from mmflow.sampling.config import SampleConfig
from mmflow.sampling.generate import NonFiniteSamples, generate, row_noise
from mmflow.sampling.layout import SampleLayout, WrongOutputRequest
from mmflow.tasks import get_task_class, recipe_from_dict
from mmflow.tasks.encoders import bundled_tokenizer, folder_fingerprint
from mmflow.tasks.first_frame import FirstFrame, with_first_frame
from mmflow.tasks.flow_task import FlowMatchingTask
from mmflow.text.default import TextEncoderNotFound
from mmflow.tokenizers import AudioVAE, ImageVAE
from mmflow.train.checkpoint import MANIFEST, list_checkpoints, verify_checkpoint
from mmflow.train.lora_training import BASE_FROM_CWD_KEY, BASE_MODEL_KEY
from mmflow.utils.fs import atomic_folder, write_json_atomic
from mmflow.utils.seeding import mix_seed

logger = logging.getLogger(__name__)
PIPELINE_FILE = "pipeline.json"
SAMPLES_INDEX = "samples.json"  # what `save` wrote: the settings and each file's prompt and seed
PREVIEW = "samples.png"
MEDIA_BATCH = 16  # rows solved together by default (media; points go all at once): bounds memory
DEVICE_FORMS = "cpu, cuda, cuda:N or mps"


def parse_device(value: str | torch.device) -> torch.device:
    """`value` as a torch.device this machine has, or ConfigError naming it and the allowed forms."""
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError, TypeError) as e:  # torch's parse error lists every backend it knows
        raise ConfigError(f"{str(value)!r} is not a device; use {DEVICE_FORMS}", "--device") from e
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{str(value)!r}: this machine has no CUDA device; use cpu", "--device")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{str(value)!r}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}",
                              "--device")
        return device
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{str(value)!r}: MPS is not available on this machine; use cpu", "--device")
        return device
    raise ConfigError(f"{str(value)!r}: device type {device.type!r} is not supported; use {DEVICE_FORMS}", "--device")


def model_candidates(path: str | Path) -> tuple[list[Path], bool]:
    """(folders holding a saved pipeline, in the order to try them; whether `path` named one itself).

    A folder with pipeline.json is the only candidate (what the user named is used or refused, never
    swapped); a run folder offers its `model/` export, then its checkpoints newest first.
    """
    path = Path(path)
    if not path.exists():
        raise MissingInput(f"{path} does not exist (pass a run folder, a checkpoint folder or an exported model)")
    if (path / PIPELINE_FILE).exists():
        return [path], True
    found = [path / "model"] if (path / "model").is_dir() else []
    found += [ref.path for ref in list_checkpoints(path / "checkpoints")]
    return found, False


def _model_dir(folder: Path, name: str, use_ema: bool) -> Path:
    """models/<name>_ema of a saved pipeline where it is there and wanted, else models/<name>."""
    ema = folder / "models" / f"{name}_ema"
    return ema if use_ema and ema.exists() else folder / "models" / name


def adapter_folder(path: str | Path, use_ema: bool = True) -> Path:
    """The LoRA adapter `path` names: a peft adapter folder, or the adapter a LoRA run, checkpoint or export
    holds (its EMA adapter where saved and `use_ema`)."""
    return _adapter_and_tokenizer(path, use_ema)[0]


def _adapter_and_tokenizer(path: str | Path, use_ema: bool = True) -> tuple[Path, Path | None]:
    """adapter_folder(path), and the tokenizer a LoRA run's export bundles (a decoder of its own; None: the
    base's, or a bare peft folder)."""
    path = Path(path)
    if is_adapter_folder(path):
        return path, None
    for folder in model_candidates(path)[0]:
        if (folder / PIPELINE_FILE).is_file():
            info = read_json_object(folder / PIPELINE_FILE)
            if BASE_MODEL_KEY in info:
                record = (info.get("components") or {}).get("tokenizer")
                return (_model_dir(folder, info.get("model", "velocity"), use_ema),
                        bundled_tokenizer(folder, record) if record is not None else None)
    raise MissingInput(f"{path} is not a LoRA adapter: no {ADAPTER_CONFIG} there, and it is not a LoRA run, "
                       f"checkpoint or export (trained with train.lora)")


def _verified(folder: Path) -> Path:
    """`folder`, after checking a checkpoint's files against its MANIFEST (sizes and sha256)."""
    if (folder / MANIFEST).exists():
        reason = verify_checkpoint(folder, hashes=True)
        if reason is not None:
            raise CorruptModel(f"{folder}: checkpoint does not match its {MANIFEST}: {reason}")
    if not (folder / PIPELINE_FILE).is_file():
        raise CorruptModel(f"{folder}: no {PIPELINE_FILE} (the export is incomplete)")
    return folder


class OutputExists(UserError, FileExistsError):
    """`save` would overwrite samples already in the output folder."""


@dataclass
class PipelineOutput:
    """media: (N, *layout.media_shape) float32 on CPU, in [-1, 1] for media (points: (N, D)); inputs: each
    row's prompt / label (None: unconditional), num_per_prompt rows per input in order; seeds: each row's
    seed (its noise comes from that seed alone); settings: the sampler settings used; model: the velocity
    weights' fingerprint; report: task facts about the samples (e.g. what a digit classifier sees)."""

    media: Tensor
    inputs: list[Any]
    seeds: list[int]
    settings: dict[str, Any]
    layout: SampleLayout
    num_per_prompt: int
    model: str
    nfe: int
    report: dict[str, Any]

    def metadata(self, i: int) -> dict[str, str | float | int]:
        """Sample i's provenance: prompt or label, seed, sampler settings, model fingerprint."""
        row = self.inputs[i]
        who = {} if row is None else {"prompt": row} if isinstance(row, str) else {"label": int(row)}
        return {**who, "seed": self.seeds[i], **{k: v for k, v in self.settings.items() if v is not None},
                "model": self.model, "mmflow": __version__}


class FlowPipeline:
    """A trained flow model and what it needs to turn user input into media.

    Components: `velocity` (the model), `task` (how prompts / labels become a condition, what one sample
    is; it owns the frozen encoders), `path` (the probability path of training), `sample_defaults` (the
    recipe's sampler settings), `extra_models` (other trained parts, e.g. the digits' text embedder).
    """

    def __init__(self, task: FlowMatchingTask, velocity: nn.Module, extra_models: dict[str, nn.Module],
                 info: dict[str, Any], source: Path) -> None:
        self.task, self.velocity, self.extra_models = task, velocity, extra_models
        self.recipe: Recipe = task.recipe
        self.path = task.path
        self.sample_defaults: SampleConfig = task.recipe.sample
        self.info, self.source = info, source
        self.model_name = info.get("model", "velocity")
        self.fingerprint = folder_fingerprint(source)  # the velocity weights' sha256: each sample file records it
        self.device = torch.device("cpu")
        self.adapters: list[tuple[Path, float]] = []  # LoRA adapters added to the velocity model, with their scales
        self.own_tokenizer: Path | None = None  # a LoRA run's own decoder, where one brought it (use_tokenizer)
        self.compile_note = "compile: eager (not asked for)"  # what `compile` decided, for the command line's log

    @property
    def components(self) -> dict[str, nn.Module]:
        """Every module sampling runs: the velocity model, extra models and the frozen encoders by name."""
        return {self.model_name: self.velocity, **self.extra_models, **self.task.frozen_models()}

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu",
                        text_encoders: Mapping[str, str] | None = None,
                        compile: CompileSetting = "auto") -> "FlowPipeline":
        """Load a saved pipeline, verified (see the module docstring); a run folder whose `model/` export
        does not load falls back to its newest intact checkpoint with a warning naming what was wrong.
        text_encoders: {encoder name: folder} for encoders the model references rather than holds.
        compile: see `compile` ("auto": on for an MM-DiT on CUDA, eager otherwise)."""
        device = parse_device(device)
        candidates, explicit = model_candidates(path)
        if not candidates:
            raise MissingInput(f"{path}: no {PIPELINE_FILE}, no model/ export and no checkpoint found")
        tried: list[str] = []
        for folder in candidates:
            try:
                pipe = cls._load(_verified(folder), use_ema, text_encoders)
            except UserError as e:
                # a referenced encoder that is missing, or text_encoders that do not fit: not the folder's
                # fault, so every folder of the run would say the same
                if explicit or isinstance(e, TextEncoderNotFound) or getattr(e, "key", None) == "text_encoders":
                    raise
                tried.append(str(e) if str(e).startswith(str(folder)) else f"{folder}: {e}")  # name the folder once
                continue
            if tried:
                logger.warning("skipped %s; sampling from %s instead", "; skipped ".join(tried), folder)
            return pipe.to(device).compile(compile)
        raise CorruptModel(f"{path}: no usable model ({len(tried)} tried): " + "; ".join(tried))

    @classmethod
    def _load(cls, folder: Path, use_ema: bool, text_encoders: Mapping[str, str] | None) -> "FlowPipeline":
        """The models pipeline.json names (EMA weights where saved) and the frozen components it lists."""
        info_path = folder / PIPELINE_FILE
        info = read_json_object(info_path)
        if BASE_MODEL_KEY in info:  # a LoRA run's export: its base model, then its adapter
            return cls._with_base(folder, info, use_ema, text_encoders)
        for key in ("task", "recipe"):
            if key not in info:
                raise CorruptModel(f"{info_path}: missing key {key!r}")
        task_class = get_task_class(info["task"], source=str(info_path))
        # the bundled (or referenced) tokenizer and text encoders replace the recipe's original paths
        recipe_dict = task_class.resolve_exported(info["recipe"], info.get("components", {}), folder, text_encoders)
        task = task_class(recipe_from_dict(recipe_dict, source=str(info_path)))
        if not isinstance(task, FlowMatchingTask):
            raise CorruptModel(f"{info_path}: task {info['task']!r} is not a flow model (nothing to sample)")
        main = _model_dir(folder, info.get("model", "velocity"), use_ema)
        velocity = load_model(main).eval()
        extras = {n: load_model(_model_dir(folder, n, use_ema)).eval() for n in info.get("extra_models", [])}
        task.attach_models(extras)
        return cls(task, velocity, extras, info, main)

    @classmethod
    def _with_base(cls, folder: Path, info: dict[str, Any], use_ema: bool,
                   text_encoders: Mapping[str, str] | None) -> "FlowPipeline":
        """A LoRA export: the base model its pipeline.json points at, with the export's adapter added."""
        base = Path(str(info[BASE_MODEL_KEY]))
        tried = [str(base)]
        if not base.exists() and BASE_FROM_CWD_KEY in info:  # the clone moved: the base's place within it
            base = Path(str(info[BASE_FROM_CWD_KEY]))
            tried.append(f"{base} (from {Path.cwd()})")
            if base.exists():
                logger.info("LoRA base model %s not found; using %s", tried[0], base)
        if not base.exists():
            raise MissingInput(f"{folder / PIPELINE_FILE}: the LoRA adapter's base model does not exist at "
                               f"{' nor '.join(tried)} (copy it along, or fold the adapter into a full model "
                               f"with `mmflow lora merge`)")
        pipe = cls.from_pretrained(base, use_ema, text_encoders=text_encoders, compile=False)  # the caller compiles
        pipe.load_lora(folder, use_ema=use_ema)
        # the run's sampler settings and prompts, not the base's: what its validation measured it with
        sample = info.get("recipe", {}).get("sample")
        if isinstance(sample, dict):
            pipe.sample_defaults = from_dict(SampleConfig, sample, source=str(folder / PIPELINE_FILE), prefix="sample")
        if info.get("default_inputs"):
            pipe.info = {**pipe.info, "default_inputs": info["default_inputs"]}
        return pipe

    def use_tokenizer(self, folder: Path) -> None:
        """Decode (and encode) through the tokenizer in `folder` instead: a LoRA run's own decoder of the same
        latents. The fingerprint that samples record changes with it."""
        self.own_tokenizer = Path(folder)
        self.task.encoders.use_tokenizer(folder)
        self.task.place_frozen_models(self.device)
        self.fingerprint = hashlib.sha256(f"{self.fingerprint} {folder_fingerprint(folder)}".encode()).hexdigest()
        logger.info("tokenizer: %s (the LoRA run's own decoder)", folder)

    def load_lora(self, adapter: str | Path, scale: float = 1.0, use_ema: bool = True) -> str:
        """Add a LoRA adapter to the velocity model, its update weighted by `scale` (0: none); several compose
        (their updates add). adapter: a peft adapter folder or a LoRA run / checkpoint / export (see
        `adapter_folder`); one made for another base model is refused (AdapterMismatch naming the layers).
        A run that trained through a decoder of its own (mmflow/train/lora_training.py) brings it along: the
        pipeline decodes through it from then on (two adapters with different decoders are refused).
        The fingerprint that samples record changes with it. Returns the adapter's name in the model."""
        folder, tokenizer = _adapter_and_tokenizer(adapter, use_ema)
        if tokenizer is not None and self.own_tokenizer is not None and (
                folder_fingerprint(tokenizer) != folder_fingerprint(self.own_tokenizer)):
            raise WrongOutputRequest(f"{adapter} decodes through its own tokenizer {tokenizer}, another than the one "
                                     f"an earlier adapter brought ({self.own_tokenizer}): one pipeline decodes "
                                     f"through one")
        name = f"adapter{len(self.adapters)}"
        load_adapter(self.velocity, folder, name, scale)
        if tokenizer is not None:
            self.use_tokenizer(tokenizer)
        self.velocity.to(self.device)
        self.adapters.append((folder, scale))
        mixed = f"{self.fingerprint} {folder_fingerprint(folder)} {scale!r}"
        self.fingerprint = hashlib.sha256(mixed.encode()).hexdigest()
        return name

    def compile(self, setting: CompileSetting = True) -> "FlowPipeline":
        """torch.compile the velocity model and an image or audio tokenizer's decoder in place, as train.compile
        does (mmflow/models/compile.py): "auto" compiles an MM-DiT on CUDA only. The first sampling call compiles;
        samples equal eager ones to float rounding (tests/test_pipeline_media.py). A video tokenizer's decoder
        runs in chunks that carry state across them, and stays eager. The decision is logged and kept in
        `compile_note`."""
        on, why = compile_decision(setting, self.device, self.velocity, "compile")
        compiled = []
        if on:
            compile_module(self.velocity)
            compiled.append(f"{self.model_name} ({type(self.velocity).__name__})")
            for name, module in self.task.frozen_models().items():
                if isinstance(module, (ImageVAE, AudioVAE)):
                    compile_module(module.decoder)
                    compiled.append(f"{name} decoder")
        self.compile_note = (f"compile: {' and '.join(compiled)} compiled, on the first call ({why})" if on
                             else f"compile: eager ({why})")
        logger.info("%s", self.compile_note)
        return self

    def to(self, device: str | torch.device) -> "FlowPipeline":
        """Move every component to `device` (checked: cpu, cuda, cuda:N or mps)."""
        self.device = parse_device(device)
        self.velocity.to(self.device)
        for m in self.extra_models.values():
            m.to(self.device)
        self.task.place_frozen_models(self.device)
        return self

    def save_pretrained(self, folder: str | Path, dtype: torch.dtype | None = None, overwrite: bool = True) -> Path:
        """Write this pipeline as a self-contained model folder (models/, pipeline.json), atomically: the
        velocity and extra models as loaded (EMA weights where loaded; stored in `dtype` if given, e.g.
        float16 to ship half the bytes; LoRA adapters merged in at their scales), the frozen components copied
        or referenced as at export."""
        folder = Path(folder)
        velocity = merged_copy(self.velocity) if self.adapters else self.velocity  # LoRA adapters folded in
        with atomic_folder(folder, overwrite=overwrite) as out:
            for name, module in {self.model_name: velocity, **self.extra_models}.items():
                save_model(module, out / "models" / name, dtype=dtype)
            info = {k: v for k, v in self.info.items() if k not in ("recipe", "components")}
            components = self.task.export_frozen(out / "models")
            recipe = {**to_dict(self.recipe), "sample": to_dict(self.sample_defaults)}  # a LoRA export's own
            write_json_atomic(out / PIPELINE_FILE, {**info, "recipe": recipe,
                                                    **({"components": components} if components else {})})
        return folder

    # ------------------------------------------------------------------ sampling
    def sample_config(self, overrides: Sequence[str] = (), **settings: Any) -> SampleConfig:
        """The recipe's sampling defaults with `sample.key=value` (or `key=value`) overrides, then the
        keyword settings (None: keep), validated: errors name the key and the allowed values."""
        keys = [o if o.startswith("sample.") else f"sample.{o}" for o in overrides]
        data = apply_overrides({"sample": to_dict(self.sample_defaults)}, keys)["sample"]
        data.update({k: v for k, v in settings.items() if v is not None})
        return from_dict(SampleConfig, data, source="sampling settings", prefix="sample")

    def __call__(self, prompts: str | Sequence[str] | None = None, *, labels: Sequence[int] | None = None,
                 num_per_prompt: int = 1, seed: int | None = None, guidance: float | None = None,
                 steps: int | None = None, solver: str | None = None, negative_prompt: str | None = None,
                 size: int | None = None, num_frames: int | None = None, seconds: float | None = None,
                 sample_config: SampleConfig | None = None, batch_size: int | None = None,
                 image: FirstFrame | Sequence[FirstFrame] | None = None, progress: bool = False) -> PipelineOutput:
        """Sample num_per_prompt items per prompt (or label; neither: the model's default inputs) -> media.

        seed / guidance / steps / solver override `sample_config` (default: the recipe's sample section);
        negative_prompt replaces u(null) in CFG; size (image, video), num_frames (video) or seconds (audio)
        ask for another output size where the model allows; batch_size rows are solved together.
        image (video models trained with model.first_frame > 0): the clips' first frame, one for every
        prompt or one per prompt (files or (3, H, W) tensors in [-1, 1]; see mmflow/tasks/first_frame.py).
        """
        given = {"seed": seed, "guidance": guidance, "steps": steps, "solver": solver}
        cfg = self.sample_config(**{**(to_dict(sample_config) if sample_config else {}),
                                    **{k: v for k, v in given.items() if v is not None}})
        num_per_prompt = _count(num_per_prompt, "num_per_prompt")
        layout = self.task.sample_layout(size=size, num_frames=num_frames, seconds=seconds)
        inputs = self._inputs(prompts, labels)
        rows = [x for x in inputs for _ in range(num_per_prompt)]
        seeds = [cfg.seed + i for i in range(len(rows))]
        rows, warnings = self.task.prepare_inputs(rows, seeds)
        for message in warnings:
            logger.warning(message)
        step = _count(batch_size, "batch_size") if batch_size is not None else (
            MEDIA_BATCH if layout.modality else len(rows))
        first = self._first_frames(image, len(inputs), num_per_prompt, layout)
        media, nfe = [], 0
        with torch.no_grad(), tqdm(total=len(rows), unit="sample", disable=not progress, desc="sampling") as bar:
            null = self._null(negative_prompt)
            for lo in range(0, len(rows), step):
                x0 = row_noise(layout.x_shape, seeds[lo: lo + step])  # (b, *x_shape)
                cond = self.task.input_condition(self.velocity, rows[lo: lo + step], self.device)
                null_b, decode = null if cond is not None else None, layout.decode
                extra = self.task.layout_condition(layout, len(x0), self.device) if cond is not None else {}
                if extra:  # what the output size fixes (an audio model's timing) conditions both CFG branches
                    cond, null_b = {**cond, **extra}, {**null_b, **extra}
                if first is not None:  # the first frame conditions both CFG branches: guidance is about the text
                    concat, z0 = (f[lo: lo + step].to(self.device) for f in first)
                    cond, null_b = {**cond, "concat": concat}, {**null_b, "concat": concat}
                    decode = partial(_decode_with_first_frame, z0=z0, decode=layout.decode)
                sde_noise = torch.Generator().manual_seed(mix_seed(cfg.seed, lo))
                try:
                    out = generate(self.velocity, x0.to(self.device), cond, null_b, cfg,
                                   self.path, generator=sde_noise, decode=decode, clamp=layout.clamp)
                except NonFiniteSamples as e:  # name the model, and what to change
                    raise NonFiniteSamples(f"sampling {self.source} gave {e}; nothing was written. The weights are "
                                           "finite: check the sample settings") from None
                media.append(out.x)
                nfe = out.nfe
                bar.update(len(x0))
        x = torch.cat(media)
        settings = {"solver": cfg.solver, "steps": cfg.steps, "guidance": cfg.guidance, "grid": cfg.grid,
                    "shift": cfg.shift, "negative_prompt": negative_prompt}
        if cfg.solver == "sde":
            settings.update(noise_scale=cfg.noise_scale, diffusion=cfg.diffusion)
        if image is not None:
            settings["first_frame"] = ", ".join(str(im) if isinstance(im, (str, Path)) else "tensor" for im in _as_list(image))
        return PipelineOutput(x, rows, seeds, settings, layout, num_per_prompt, self.fingerprint, nfe,
                              self.task.sample_report(x, rows))

    def _inputs(self, prompts: str | Sequence[str] | None, labels: Sequence[int] | None) -> list[Any]:
        """The user's prompts or labels as the task's inputs (the model's defaults when neither is given)."""
        kind = self.task.input_kind
        if prompts is not None and labels is not None:
            raise WrongOutputRequest("give prompts (--prompt) or labels (--label), not both")
        if prompts is not None:
            prompts = [prompts] if isinstance(prompts, str) else list(prompts)
            if kind != "text":
                takes = "class labels (--label)" if kind == "label" else "no input (it is unconditional)"
                raise WrongOutputRequest(f"prompts (--prompt) given, but this {self.task.name} model takes {takes}")
            if not prompts or not all(isinstance(p, str) for p in prompts):
                raise WrongOutputRequest(f"prompts must be a non-empty list of strings, got {prompts!r}")
            return prompts
        if labels is not None:
            if not labels or not all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
                raise WrongOutputRequest(f"labels must be a non-empty list of integers, got {list(labels)!r}")
            return self.task.inputs_from_labels(list(labels))
        return list(self.info.get("default_inputs") or self.task.default_inputs())

    def _first_frames(self, image: FirstFrame | Sequence[FirstFrame] | None, n_inputs: int, per_input: int,
                      layout: SampleLayout) -> tuple[Tensor, Tensor] | None:
        """Image-to-video: (cond["concat"], first-frame latents z0), one row per sample row; None without images."""
        if image is None:
            return None
        images = _as_list(image)
        if len(images) not in (1, n_inputs):
            raise WrongOutputRequest(f"give one first frame (--image) for every prompt or one per prompt: "
                                     f"{len(images)} images for {n_inputs} prompts")
        concat, z0 = self.task.first_frame_condition(images, layout)  # (n, C + 1, *x_shape[1:]), (n, C, 1, h, w)
        rows = [i if len(images) > 1 else 0 for i in range(n_inputs) for _ in range(per_input)]
        return concat.cpu()[rows], z0.cpu()[rows]

    def _null(self, negative_prompt: str | None) -> Any:
        """What CFG steers away from: the negative prompt's condition, else the model's u(null)."""
        if negative_prompt is not None:
            return self.task.negative_condition(self.velocity, negative_prompt, self.device)
        return None if self.task.input_kind == "none" else self.task.null_condition(self.velocity)

    def save(self, output: PipelineOutput, out_dir: str | Path, overwrite: bool = False) -> list[Path]:
        """Write `output` into out_dir: media one file each (sample_NNNN.png / .mp4 / .wav, carrying their
        provenance: see PipelineOutput.metadata) or points as samples.safetensors; a preview samples.png
        (one row per input); samples.json (the settings and each file's input and seed). Refuses to overwrite
        earlier samples unless `overwrite`. Returns the written files, preview and index last."""
        out_dir = Path(out_dir)
        layout, n = output.layout, len(output.media)
        spec = get_modality(layout.modality) if layout.modality else None
        names = [f"sample_{i:04d}{spec.suffix}" for i in range(n)] if spec else ["samples.safetensors"]
        if not overwrite:
            taken = [out_dir / f for f in (*names, PREVIEW, SAMPLES_INDEX) if (out_dir / f).exists()]
            if taken:
                raise OutputExists(f"{taken[0]} already exists: choose another output folder (--out) or pass "
                                   "--overwrite to replace earlier samples")
        out_dir.mkdir(parents=True, exist_ok=True)
        title = f"{output.settings['solver']} x{output.settings['steps']}, w={output.settings['guidance']:g}"
        if spec is not None:
            files = [spec.write(output.media[i], out_dir / names[i], fps=layout.fps, sample_rate=layout.sample_rate,
                                metadata=output.metadata(i)) for i in range(n)]
            k = output.num_per_prompt
            grid = output.media.view(n // k, k, *output.media.shape[1:])  # (inputs, per input, C, ...)
            labels = [str(x)[:24] for x in output.inputs[::k]] if output.inputs[0] is not None else None
            files.append(spec.preview(grid, out_dir / PREVIEW, labels=labels, title=title))
        else:
            tensors = {"samples": output.media.contiguous(), "seeds": torch.tensor(output.seeds)}
            if output.inputs and output.inputs[0] is not None:
                tensors["labels"] = torch.tensor(output.inputs)
            meta = {k: str(v) for k, v in output.metadata(0).items() if k not in ("seed", "label")}
            save_file(tensors, str(out_dir / names[0]), metadata=meta)
            files = [out_dir / names[0]]
            preview = self.task.points_preview(output.media, out_dir / PREVIEW, title)
            files += [preview] if preview else []
        index = {"model": output.model, "source": str(self.source), "settings": output.settings,
                 "media": layout.describe(), "num_per_prompt": output.num_per_prompt, **output.report,
                 "samples": [{"file": names[i] if spec else names[0], "input": output.inputs[i], "seed": output.seeds[i]}
                             for i in range(n)]}
        write_json_atomic(out_dir / SAMPLES_INDEX, index)
        return files + [out_dir / SAMPLES_INDEX]


def _as_list(image: FirstFrame | Sequence[FirstFrame]) -> list[FirstFrame]:
    """One first frame or several (a (n, 3, H, W) tensor is n of them) as a list."""
    if isinstance(image, (str, Path)) or (isinstance(image, Tensor) and image.ndim == 3):
        return [image]
    return list(image)


def _decode_with_first_frame(x: Tensor, z0: Tensor, decode: Any) -> Tensor:
    """Sampled latents with frame 0 set to the given image's, then decoded (decode None: x is media)."""
    x = with_first_frame(x, z0)
    return x if decode is None else decode(x)


def _count(value: Any, name: str) -> int:
    """A positive int argument, or WrongOutputRequest naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise WrongOutputRequest(f"{name} must be a positive integer, got {value!r}")
    return value
