"""Trainer behaviour on the small toy task: learning, run folder, resume, corruption, accumulation."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate import DistributedType
from accelerate.utils import set_seed
from safetensors.torch import load_file

from mmflow.config import ConfigError
from mmflow.models.toy_mlp import MLPVelocity
from mmflow.model_io import load_model
from mmflow.tasks.toy2d import Toy2DTask
from mmflow.train import checkpoint as ckpt
from mmflow.train.config import MULTI_GPU_CONFIG, TrainConfig, check_fsdp_plugin
from mmflow.train.task import CounterReport, LossOutput
from mmflow.train.trainer import NoUsableCheckpoint, Trainer


def _train(recipe, run_dir: Path, task_cls=Toy2DTask, **kw):
    return Trainer(recipe, task_cls(recipe), run_dir, **kw).train()


def _final_weights(run_dir: Path, name: str = "velocity") -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "models" / name / "model.safetensors"))


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0.0 if atol == 0 else 1e-5, msg=k)


def test_training_lowers_loss_and_fills_the_run_folder(tmp_path, make_toy_recipe):
    recipe = make_toy_recipe("model.hidden=64", "train.max_steps=120", "train.batch_size=128",
                             "train.log_every=20", "train.checkpoint_every=60", "sample.num_samples=2000",
                             "sample.steps=8")
    result = _train(recipe, tmp_path)
    losses = [loss for _, loss in result.loss_history]
    assert losses[-1] < 0.6 * losses[0], losses
    assert (tmp_path / "train.log").read_text().count("step 120 loss") == 1
    from mmflow.tasks import load_recipe

    assert load_recipe(tmp_path / "recipe.yaml") == recipe  # the resolved recipe reloads identically
    events = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert events, "tensorboard events were not written"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(events[0].parent)).Reload()
    bins = [[e.value for e in tb.Scalars(f"loss_t{k}")] for k in range(10)]  # the training loss per t-bin
    assert all(len(b) == 6 for b in bins)  # one value per log line (every 20 of 120 steps)
    assert len({round(b[-1], 4) for b in bins}) == 10  # the loss depends on t: the bins differ
    steps = [r.step for r in ckpt.list_checkpoints(tmp_path / "checkpoints")]
    assert steps == [120, 60]
    for s in steps:
        assert ckpt.verify_checkpoint(tmp_path / "checkpoints" / ckpt.step_dir_name(s)) is None
    # the export loads without the recipe and reproduces the EMA weights of the last checkpoint
    model = load_model(tmp_path / "model" / "models" / "velocity_ema")
    assert sum(p.abs().sum() for p in model.parameters()) > 0
    val = tmp_path / "validation" / ckpt.step_dir_name(120)
    for png in ("samples.png", "trajectories.png", "t_diagnostics.png"):
        assert (val / png).stat().st_size > 1000
    metrics = json.loads((val / "metrics.json").read_text())
    assert metrics["nfe"] == 16
    assert metrics["ratio_sliced_w1"] < 3.0, metrics  # 120 steps: a loose bound; the quality test is stricter
    assert json.loads((tmp_path / "metrics.json").read_text())["step"] == 120


class _CrashAt(Toy2DTask):
    """The toy task, dying in the middle of training (a kill between two checkpoints)."""

    crash_step = 15

    def loss(self, models, batch, rng, optimizer, step):
        if step == self.crash_step:
            raise KeyboardInterrupt("simulated kill")
        return super().loss(models, batch, rng, optimizer, step)


def test_resume_after_a_kill_matches_the_uninterrupted_run(tmp_path, make_toy_recipe):
    recipe = make_toy_recipe()
    _train(recipe, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        _train(recipe, tmp_path / "killed", task_cls=_CrashAt)
    assert [r.step for r in ckpt.list_checkpoints(tmp_path / "killed" / "checkpoints")] == [10]
    _train(recipe, tmp_path / "killed", resume=True)
    # same data order, noise, LR schedule and EMA: bit-identical weights
    _assert_same(_final_weights(tmp_path / "straight"), _final_weights(tmp_path / "killed"))
    _assert_same(_final_weights(tmp_path / "straight", "velocity_ema"), _final_weights(tmp_path / "killed", "velocity_ema"))


def test_resume_skips_a_corrupt_checkpoint_and_falls_back(tmp_path, make_toy_recipe, caplog):
    recipe = make_toy_recipe("train.max_steps=30")
    _train(recipe, tmp_path)
    newest = tmp_path / "checkpoints" / ckpt.step_dir_name(30)
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated by a full disk, say
    trainer = Trainer(recipe, Toy2DTask(recipe), tmp_path, resume=True)
    trainer._setup_logging()
    trainer._build()
    with caplog.at_level("WARNING", logger="mmflow"):
        assert trainer.load_newest_checkpoint() == 20
    assert "step_00000030" in caplog.text and "model.safetensors" in caplog.text


def test_resume_with_no_usable_checkpoint_says_so(tmp_path, make_toy_recipe):
    recipe = make_toy_recipe()
    with pytest.raises(NoUsableCheckpoint, match="no step_"):
        _train(recipe, tmp_path / "empty", resume=True)
    _train(recipe, tmp_path / "run")
    for ref in ckpt.list_checkpoints(tmp_path / "run" / "checkpoints"):
        (ref.path / ckpt.MANIFEST).unlink()  # as if every write had been cut short
    with pytest.raises(NoUsableCheckpoint) as info:
        _train(recipe, tmp_path / "run", resume=True)
    assert "step_00000020" in str(info.value) and "step_00000010" in str(info.value)


def test_a_crash_while_saving_leaves_the_previous_checkpoint_usable(tmp_path, make_toy_recipe, monkeypatch):
    recipe = make_toy_recipe()
    trainer = Trainer(recipe, Toy2DTask(recipe), tmp_path)
    real_save = trainer.save_checkpoint
    calls = []

    def dying_save(step):
        calls.append(step)
        if step == 20:
            monkeypatch.setattr("mmflow.train.trainer.save_model", _raise)
        return real_save(step)

    monkeypatch.setattr(trainer, "save_checkpoint", dying_save)
    with pytest.raises(OSError, match="disk full"):
        trainer.train()
    assert calls == [10, 20]
    refs = ckpt.list_checkpoints(tmp_path / "checkpoints")
    assert [r.step for r in refs] == [10] and ckpt.verify_checkpoint(refs[0].path) is None
    assert load_model(tmp_path / "model" / "models" / "velocity")  # the export of step 10 is intact


def _raise(*args, **kwargs):
    raise OSError("disk full")


def test_gradient_accumulation_equals_the_larger_batch(tmp_path, make_toy_recipe):
    _train(make_toy_recipe("train.max_steps=5", "train.batch_size=64"), tmp_path / "big")
    _train(make_toy_recipe("train.max_steps=5", "train.batch_size=32", "train.grad_accum=2"), tmp_path / "accum")
    _assert_same(_final_weights(tmp_path / "big"), _final_weights(tmp_path / "accum"), atol=1e-6)


def test_overfitting_one_sample_drives_the_loss_to_zero(tmp_path, make_toy_recipe):
    recipe = make_toy_recipe("model.hidden=64", "train.max_steps=300", "train.batch_size=64", "train.lr=3e-3",
                             "train.ema_decay=null", "train.checkpoint_every=300", "train.log_every=50",
                             "flow.cfg_dropout=0.0")
    result = Trainer(recipe, Toy2DTask(recipe), tmp_path, overfit_batch=1).train()
    losses = [loss for _, loss in result.loss_history]
    # one data point z: the marginal velocity is exactly z - eps, so the CFM loss can reach 0
    assert losses[-1] < 0.05 * losses[0], losses


def test_a_model_that_ignores_time_trains_worse(tmp_path, make_toy_recipe):
    # unconditional: with the class label a time-free field x' = mu_y - x already lands near the right
    # Gaussian, which would hide the effect
    common = ("model.hidden=64", "train.max_steps=400", "train.batch_size=128", "train.log_every=100",
              "train.checkpoint_every=400", "sample.num_samples=2000", "data.conditional=false")
    with_t = _train(make_toy_recipe(*common), tmp_path / "t")
    without_t = _train(make_toy_recipe(*common, "model.ignore_time=true"), tmp_path / "no_t")
    # the seeds' "does t change anything?": the best time-free field is the t-averaged one
    assert without_t.final_loss > 1.05 * with_t.final_loss, (with_t.final_loss, without_t.final_loss)
    assert without_t.metrics["ratio_sliced_w1"] > 1.5 * with_t.metrics["ratio_sliced_w1"], (with_t.metrics, without_t.metrics)


def test_bf16_autocast_trains_on_cpu_and_keeps_fp32_weights(tmp_path, make_toy_recipe, fresh_accelerate):
    result = _train(make_toy_recipe("train.max_steps=10", "train.mixed_precision=bf16"), tmp_path)
    assert torch.isfinite(torch.tensor(result.final_loss))
    weights = _final_weights(tmp_path)
    assert all(w.dtype == torch.float32 for w in weights.values())
    # autocast really ran in bf16: the result differs from the fp32 run of the same recipe
    fresh_accelerate()
    _train(make_toy_recipe("train.max_steps=10"), tmp_path / "fp32")
    fp32 = _final_weights(tmp_path / "fp32")
    assert any(not torch.equal(weights[k], fp32[k]) for k in weights)


def test_fp16_without_a_gpu_is_refused_before_any_work(tmp_path, make_toy_recipe):
    from mmflow.config import ConfigError

    if torch.cuda.is_available():
        pytest.skip("fp16 is valid where CUDA exists")
    with pytest.raises(ConfigError, match="train.mixed_precision: 'fp16' needs a CUDA device"):
        _train(make_toy_recipe("train.mixed_precision=fp16"), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("ema_decay, sharding, processes, refused", [
    (0.999, "none", 1, "train.ema_decay"),   # found on an H200: the EMA's deepcopy of the plugin's model fails
    (0.999, "none", 8, "train.ema_decay"),
    (None, "fsdp2", 8, "train.sharding"),    # sharded twice
    (0.999, "fsdp2", 8, "train.sharding"),
    (None, "fsdp2", 1, None),                # one process: the trainer does not shard, the plugin may
    (None, "none", 8, None),
])
def test_what_accelerates_fsdp_plugin_cannot_train(ema_decay, sharding, processes, refused) -> None:
    train = TrainConfig(ema_decay=ema_decay, sharding=sharding)
    if refused is None:
        check_fsdp_plugin(train, processes)
        return
    with pytest.raises(ConfigError, match="accelerate's FSDP plugin") as e:
        check_fsdp_plugin(train, processes, "fsdp.yaml")
    assert e.value.key == refused and "distributed_type: FSDP in fsdp.yaml" in str(e.value)
    assert MULTI_GPU_CONFIG in str(e.value)
    if refused == "train.ema_decay":
        assert str(e.value) == (
            "train.ema_decay: 0.999 (an EMA) cannot train under accelerate's FSDP plugin (distributed_type: FSDP in "
            "fsdp.yaml): the plugin shards the model inside accelerator.prepare, where the EMA cannot copy it "
            "(copy.deepcopy fails, seen on an H200). Launch with a MULTI_GPU accelerate config (e.g. "
            "recipes/accelerate/multi_gpu_8gpu.yaml) and train.sharding: fsdp2, which shards the model and its EMA "
            "alike, or set train.ema_decay: null")


def test_accelerates_fsdp_plugin_with_an_ema_is_refused_before_any_work(tmp_path, make_toy_recipe):
    """The trainer asks the accelerator it is given (a stand-in here: the plugin needs GPUs) before it builds or
    writes anything; without an EMA it goes on."""
    acc = SimpleNamespace(is_main_process=True, distributed_type=DistributedType.FSDP, num_processes=1)
    recipe = make_toy_recipe()
    with pytest.raises(ConfigError, match="accelerator.prepare, where the EMA cannot copy it") as e:
        Trainer(recipe, Toy2DTask(recipe), tmp_path / "run", accelerator=acc)  # type: ignore[arg-type]
    assert e.value.key == "train.ema_decay" and not (tmp_path / "run").exists()
    plain = make_toy_recipe("train.ema_decay=null")
    Trainer(plain, Toy2DTask(plain), tmp_path / "run", accelerator=acc)  # type: ignore[arg-type]


class _WithCritic(Toy2DTask):
    """Two optimizer groups as a GAN has: the velocity's loss also runs through a critic (so its backward
    reaches the critic's weights), and the critic's own loss has zero gradient and starts late."""

    critic_from = 3

    def build_models(self):
        models = super().build_models()
        models["critic"] = MLPVelocity(models["velocity"].config)
        return models

    def optimizer_groups(self, models):
        return {"main": ["velocity"], "critic": ["critic"]}

    def ema_models(self, models):
        return ["velocity"]

    def optimizer_active(self, optimizer, step):
        return optimizer == "main" or step >= self.critic_from

    def loss(self, models, batch, rng, optimizer, step):
        x, label = batch
        t = torch.full((x.shape[0],), 0.5)
        critic_out = models["critic"](x, t, label)
        if optimizer == "main":
            out = super().loss(models, batch, rng, optimizer, step)
            return LossOutput(out.loss + critic_out.mean(), out.logs)
        self.critic_steps.append(step)
        return LossOutput(0.0 * critic_out.sum())  # no gradient of its own


def test_optimizer_groups_start_when_the_task_says_and_get_only_their_own_gradients(tmp_path, make_toy_recipe):
    recipe = make_toy_recipe("train.max_steps=6", "train.batch_size=32", "train.checkpoint_every=6",
                             "train.weight_decay=0.0", "sample.num_samples=200", "sample.steps=2")
    task = _WithCritic(recipe)
    task.critic_steps = []
    Trainer(recipe, task, tmp_path).train()
    assert task.critic_steps == [3, 4, 5]
    # the critic's own loss has no gradient: had the velocity's backward leaked into the critic's
    # optimizer step, AdamW would have moved its weights
    set_seed(recipe.seed)  # as the trainer does before building the models
    _assert_same(_final_weights(tmp_path, "critic"), _WithCritic(recipe).build_models()["critic"].state_dict())


class _FinishZeroes(Toy2DTask):
    """finish_models changes the exported model (as a tokenizer stores its latent statistics)."""

    def finish_models(self, models, dataset, device):
        self.finished_with = (sorted(models), len(dataset), models["velocity"].training)
        for p in models["velocity"].parameters():
            p.zero_()


def test_finish_models_runs_once_before_the_final_export(tmp_path, make_toy_recipe):
    recipe = make_toy_recipe("train.max_steps=4", "train.batch_size=32", "train.checkpoint_every=2",
                             "sample.num_samples=200", "sample.steps=2")
    task = _FinishZeroes(recipe)
    Trainer(recipe, task, tmp_path).train()
    assert task.finished_with[0] == ["velocity"] and task.finished_with[2] is False  # eval mode
    exported = _final_weights(tmp_path, "velocity_ema")
    assert all(not v.any() for v in exported.values())
    step2 = load_file(str(tmp_path / "checkpoints" / "step_00000002" / "models" / "velocity_ema" / "model.safetensors"))
    assert any(v.any() for v in step2.values())  # earlier checkpoints are untouched


class _UnknownMetric(Toy2DTask):
    """A validation that measures something it cannot know (a PSNR of identical images is infinite)."""

    def validate(self, models, out_dir, step, device):
        return {"psnr": float("inf"), "nfe": 4.0}


def test_a_non_finite_metric_is_written_as_null_never_as_nan(tmp_path, make_toy_recipe):
    recipe = make_toy_recipe("train.max_steps=2", "train.batch_size=16", "train.checkpoint_every=2")
    result = _train(recipe, tmp_path, task_cls=_UnknownMetric)
    assert "validation step 2: psnr not finite; written as null" in (tmp_path / "train.log").read_text()
    assert result.metrics["psnr"] is None and result.metrics["nfe"] == 4.0
    for path in (tmp_path / "metrics.json", tmp_path / "validation" / ckpt.step_dir_name(2) / "metrics.json"):
        assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
        assert json.loads(path.read_text())["psnr"] is None
    assert json.loads((tmp_path / "metrics.json").read_text())["final_loss"] == result.final_loss


class _Counting(Toy2DTask):
    """Counts the micro-batches and rows it is shown, through the task counter hooks."""

    def __init__(self, recipe):
        super().__init__(recipe)
        self.seen = {"batches": 0.0, "rows": 0.0}

    def observe_batch(self, batch):
        self.seen["batches"] += 1
        self.seen["rows"] += len(batch[0])  # (points, labels)

    def counters(self):
        return dict(self.seen)

    def counters_state(self):
        return {"seen": dict(self.seen)}

    def load_counters_state(self, state):
        self.seen = dict(state["seen"])

    def report(self, totals):
        return CounterReport({f"count_{k}": v for k, v in totals.items()}, f"counted {int(totals['batches'])} batches")


class _CountingCrash(_Counting, _CrashAt):
    pass


def test_task_counters_are_observed_summed_checkpointed_and_reported(tmp_path, make_toy_recipe):
    recipe = make_toy_recipe("train.max_steps=20", "train.batch_size=16", "train.grad_accum=2", "train.checkpoint_every=10",
                             "sample.num_samples=200", "sample.steps=2")
    straight = _train(recipe, tmp_path / "straight", task_cls=_Counting)
    assert straight.metrics["count_batches"] == 40 and straight.metrics["count_rows"] == 640
    assert "counted 40 batches" in (tmp_path / "straight" / "train.log").read_text()
    state = json.loads((tmp_path / "straight" / "checkpoints" / ckpt.step_dir_name(10) / "trainer_state.json").read_text())
    assert state["task_counters"] == {"seen": {"batches": 20, "rows": 320}}
    with pytest.raises(KeyboardInterrupt):
        _train(recipe, tmp_path / "killed", task_cls=_CountingCrash)
    resumed = _train(recipe, tmp_path / "killed", task_cls=_Counting, resume=True)  # counts from step 10 on
    assert resumed.metrics == straight.metrics


# ---------------------------------------------------------------------- train.compile (mmflow/models/compile.py)
@pytest.fixture
def aot_eager(monkeypatch):
    """Compile with aot_eager (seconds, no C++ build): what these tests check is the trainer's use of compile,
    not inductor's kernels (tests/models/test_compile.py compares those to eager)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    monkeypatch.setattr("mmflow.models.compile.BACKEND", "aot_eager")
    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()
    counters.clear()


def test_compiled_training_equals_eager_compiles_once_and_saves_the_same_keys(tmp_path, make_toy_recipe,
                                                                              fresh_accelerate, aot_eager):
    steps = ("train.max_steps=6", "train.checkpoint_every=3", "train.log_every=3")
    _train(make_toy_recipe(*steps, "train.compile=false"), tmp_path / "eager")
    fresh_accelerate()
    run = tmp_path / "compiled"
    result = _train(make_toy_recipe(*steps, "train.compile=true"), run)
    assert aot_eager["stats"]["unique_graphs"] == 1  # six steps of one batch shape: one compilation
    assert "compile: velocity (MLPVelocity) compiled, on its first step (train.compile: true)" in (
        run / "train.log").read_text()
    for sub in ("model/models/velocity", "model/models/velocity_ema", "checkpoints/step_00000006"):  # no `_orig_mod.`
        assert (load_file(str(run / sub / "model.safetensors")).keys()
                == load_file(str(tmp_path / "eager" / sub / "model.safetensors")).keys()), sub
    # aot_eager runs decomposed ATen ops: equal to eager up to float rounding over six AdamW steps
    _assert_same(_final_weights(run), _final_weights(tmp_path / "eager"), atol=1e-5)
    _assert_same(_final_weights(run, "velocity_ema"), _final_weights(tmp_path / "eager", "velocity_ema"), atol=1e-5)
    assert result.final_loss is not None
    fresh_accelerate()  # a resumed compiled run loads its own checkpoint
    resumed = _train(make_toy_recipe(*steps, "train.compile=true", "train.max_steps=7"), run, resume=True)
    assert resumed.step == 7 and "resumed from" in (run / "train.log").read_text()


def test_auto_compile_stays_eager_on_cpu_and_says_why(tmp_path, make_toy_recipe):
    run = tmp_path / "run"
    _train(make_toy_recipe("train.max_steps=2", "train.checkpoint_every=2"), run)  # train.compile: auto (default)
    assert "compile: eager (train.compile: auto, off on cpu" in (run / "train.log").read_text()


def test_compile_refuses_fsdp2(make_toy_recipe):
    from mmflow.config import ConfigError

    with pytest.raises(ConfigError, match="compile with sharding fsdp2 is untested"):
        make_toy_recipe("train.compile=true", "train.sharding=fsdp2")


def test_compiled_meanflow_training_equals_eager(tmp_path, fresh_accelerate, aot_eager):
    # the gradient's forward runs compiled; the JVP (jumping rows only) runs the bare module's eager forward
    from mmflow.tasks import load_recipe
    from toy_recipes import REPO, SMALL_TOY

    steps = [*SMALL_TOY, "train.max_steps=6", "train.checkpoint_every=3", "train.log_every=3"]
    eager = load_recipe(REPO / "recipes" / "meanflow_toy2d.yaml", [*steps, "train.compile=false"])
    _train(eager, tmp_path / "eager")
    fresh_accelerate()
    run = tmp_path / "compiled"
    _train(load_recipe(REPO / "recipes" / "meanflow_toy2d.yaml", [*steps, "train.compile=true"]), run)
    assert "compiled, on its first step (train.compile: true)" in (run / "train.log").read_text()
    # one graph for the trained forward, one for the guided / validation forwards without gradient at most
    print("GRAPHS", dict(aot_eager["stats"]))
    assert aot_eager["stats"]["unique_graphs"] <= 2, dict(aot_eager["stats"])
    _assert_same(_final_weights(run), _final_weights(tmp_path / "eager"), atol=1e-5)
