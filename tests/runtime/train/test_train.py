"""Training: schedules, the init phase, end-to-end runs on synthetic data, resume equality
and the NaN guard."""

from __future__ import annotations

import io
import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch

import uhn_runtime.train.phase_source as phase_source_module
import uhn_runtime.train.trainer as trainer_module
from tests.conftest import KillAfter, RunInterrupted
from tests.tiny_specs import SHAPES, tiny_plan
from uhn_runtime.data import load_task_data
from uhn_runtime.model.init_targets import InitTargets
from uhn_runtime.model.target import DeviceTarget
from uhn_runtime.model.target_segments import forward_in_segments
from uhn_runtime.model.weights import DirectSource, make_source
from uhn_runtime.train.checkpoint import load_checkpoint
from uhn_runtime.train.distributed import DEFAULT_MICRO_SHARDS
from uhn_runtime.train.draws import epoch_seed
from uhn_runtime.train.init_phase import run_init_phase
from uhn_runtime.train.optim import TrainingDiverged
from uhn_runtime.train.options import StepEvent
from uhn_runtime.train.precision import Precision
from uhn_runtime.train.run import TIMING_FIELDS, TrainOptions, resume_run, start_run
from uhn_runtime.train.run_dir import RunDir
from uhn_runtime.train.schedule import cosine_factor, warmup_cosine_factor
from uhn_runtime.train.steps import ExactStep, PlainStep
from uhn_runtime.train.stop_signals import RunStopped, StopSignals
from uhn_spec import compile_spec
from uhn_spec.metrics import METRICS, Accuracy

CPU = torch.device("cpu")


def options(mode: str = "uhn", **kw) -> TrainOptions:
    kw.setdefault("progress", io.StringIO())
    kw.setdefault("checkpoint_seconds", 0.0)  # a checkpoint at every log interval
    return TrainOptions(mode=mode, device="cpu", **kw)  # type: ignore[arg-type]


def logged(run_root: Path) -> list[tuple]:
    """Every record of metrics.jsonl but resume markers, without the wall-clock time."""
    lines = (run_root / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [tuple((k, v) for k, v in r.items() if k not in TIMING_FIELDS) for r in records if r["event"] != "resume"]


def with_dropout(plan):  # type: ignore[no-untyped-def]
    """Dropout makes the global RNG state part of what a checkpoint must carry."""
    layers = [layer.model_copy(update={"dropout": 0.2}) for layer in plan.targets[0].spec.layers]
    return compile_spec(plan.targets[0].spec.model_copy(update={"layers": layers}))


def train_records(run_root: Path, phase: str = "uhn") -> list[dict]:
    lines = (run_root / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [r for r in records if r["phase"] == phase and r["event"] == "train"]


# --------------------------------------------------------------------------- schedules


def test_warmup_then_cosine_matches_the_authors_epoch_factors() -> None:
    factors = [warmup_cosine_factor(e, warmup=5, total=12) for e in range(12)]
    assert factors[:6] == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0])
    cosine = [(1 + math.cos(math.pi * k / 7)) / 2 for k in range(7)]
    assert factors[5:] == pytest.approx(cosine)


def test_init_schedule_is_cosine_over_the_steps() -> None:
    assert [cosine_factor(t, 4) for t in range(5)] == pytest.approx([1.0, 0.853553, 0.5, 0.146447, 0.0], abs=1e-6)


# --------------------------------------------------------------------------- init phase


def test_init_statistics_are_the_per_tensor_mean_and_population_std() -> None:
    plan = tiny_plan("text_classification")
    target = DeviceTarget(plan.targets[0])
    flat = torch.randn(target.num_params, generator=torch.Generator().manual_seed(0))
    mean, std = InitTargets(target.plan, CPU).stats(flat)
    for i, (name, view) in enumerate(target.params_from_flat(flat).items()):
        want_std, want_mean = torch.std_mean(view, unbiased=False)
        assert float(mean[i]) == pytest.approx(float(want_mean), abs=1e-5), name
        assert float(std[i]) == pytest.approx(float(want_std), abs=1e-5), name


def _run_init(task_type: str, steps: int, lr: float) -> tuple[InitTargets, torch.Tensor, torch.Tensor]:
    plan = tiny_plan(task_type)
    target = DeviceTarget(plan.targets[0])
    source = make_source("uhn", plan, target, seed=0)
    targets = InitTargets(target.plan, CPU)
    run_init_phase(source, targets, steps, lr, Precision.resolve("auto", CPU, plan.task_types), last_good="-")
    with torch.no_grad():
        mean, std = targets.stats(source.flat())
    return targets, mean, std


def test_init_phase_brings_every_tensor_within_ten_percent_of_its_target() -> None:
    targets, mean, std = _run_init("image_classification", steps=80, lr=3e-3)
    assert (targets.std > 0).all()
    # A generator starts far off (mean ~0.07, std ~0.3 per tensor): the phase must move it.
    assert ((std - targets.std).abs() <= 0.1 * targets.std).all(), (std, targets.std)
    assert ((mean - targets.mean).abs() <= 0.1 * targets.std).all(), (mean, targets.mean)


def test_init_phase_drives_zero_targets_towards_zero() -> None:
    targets, mean, std = _run_init("graph_node_classification", steps=80, lr=3e-3)
    zero = targets.std == 0  # GCN biases
    assert zero.any() and (~zero).any()
    scale = float(targets.std.max())
    assert (std[zero] <= 0.1 * scale).all() and (mean[zero].abs() <= 0.1 * scale).all()
    assert ((std[~zero] - targets.std[~zero]).abs() <= 0.1 * targets.std[~zero]).all()


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("task_type", list(SHAPES))
def test_tiny_run_on_synthetic_data_lowers_the_loss(task_type: str, tmp_path: Path) -> None:
    epochs = 12 if task_type == "text_classification" else 6  # attention needs a few more steps
    summary = start_run(tiny_plan(task_type, epochs=epochs), tmp_path / "run", options())
    losses = [r["loss"] for r in train_records(tmp_path / "run")]
    assert len(losses) == epochs
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.9 * losses[0], losses
    assert summary["metric"] == ("rmse" if task_type == "formula_regression" else "accuracy")
    assert math.isfinite(summary["uhn"]) and summary["direct"] is None


def test_run_folder_records_config_versions_and_summary(tmp_path: Path) -> None:
    plan = tiny_plan(epochs=2)
    shown = io.StringIO()
    summary = start_run(plan, tmp_path / "run", options("both", progress=shown))
    run = RunDir.open(tmp_path / "run")
    info = run.info()
    assert info["seed"] == 3 and info["mode"] == "both"
    assert set(info["versions"]) == {"uhn", "torch", "python"}
    assert "git_revision" in info
    assert "name: tiny_mlp" in run.config_path.read_text()
    assert run.summary() == summary
    for key, kind in [("uhn", float), ("direct", float), ("seconds", float), ("generator_params", int)]:
        assert isinstance(summary[key], kind), key
    assert summary["target_params"] == plan.targets[0].num_params
    assert summary["data_notes"] and summary["metric"] == "accuracy"
    assert all(f"data: {note}" in shown.getvalue() for note in summary["data_notes"])  # stated in the run output


@pytest.mark.parametrize(("micro_shards", "strategy"), [(0, PlainStep), (DEFAULT_MICRO_SHARDS, ExactStep)])
def test_the_default_step_is_the_plain_one_and_exact_is_a_choice_run_json_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, micro_shards: int, strategy: type
) -> None:
    chosen: list[object] = []
    real = phase_source_module.step_strategy
    monkeypatch.setattr(phase_source_module, "step_strategy", lambda *args: chosen.append(real(*args)) or chosen[-1])
    given = {} if micro_shards == 0 else {"micro_shards": micro_shards}  # TrainOptions' own default
    summary = start_run(tiny_plan(epochs=1), tmp_path / "run", options("both", **given))
    assert [type(step) for step in chosen] == [strategy, strategy]  # uhn, then direct
    info = RunDir.open(tmp_path / "run").info()
    assert (info["micro_shards"], info["exact"]) == (micro_shards, micro_shards > 0)
    assert summary["train_step"] == {"uhn": strategy.name, "direct": strategy.name}


@pytest.mark.parametrize(
    ("recorded", "step"),
    [({"micro_shards": 8}, "exact"), ({}, "plain"), ({"micro_shards": 0, "exact": False}, "plain")],
    ids=["exact-when-it-was-the-default", "before-the-exact-path", "fast"],
)
def test_a_resumed_run_keeps_the_arithmetic_its_folder_recorded(tmp_path: Path, recorded: dict, step: str) -> None:
    """A folder without "exact" keeps what it recorded: 8 micro-shards from when the exact
    step was the default, none (DDP's, in one process the plain step) from before it."""
    with pytest.raises(RunInterrupted):
        start_run(tiny_plan(epochs=2), tmp_path / "run", options(observers=(KillAfter(1),), micro_shards=8))
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    info = {k: v for k, v in info.items() if k not in ("micro_shards", "exact")} | recorded
    (tmp_path / "run" / "run.json").write_text(json.dumps(info))
    assert resume_run(tmp_path / "run", options())["train_step"] == {"uhn": step}


def test_direct_training_reaches_the_data(tmp_path: Path) -> None:
    summary = start_run(tiny_plan(epochs=8, lr=1e-2), tmp_path / "run", options("direct"))
    losses = [r["loss"] for r in train_records(tmp_path / "run", "direct")]
    assert summary["uhn"] is None and summary["direct"] > 0.5  # 3 classes: chance is ~1/3
    assert losses[-1] < 0.8 * losses[0]


def test_data_order_is_a_function_of_seed_and_epoch() -> None:
    data = load_task_data(tiny_plan().targets[0].spec.task)
    first = [b.targets for b in data.train_batches(64, epoch_seed(3, 1))]
    again = [b.targets for b in data.train_batches(64, epoch_seed(3, 1))]
    other = [b.targets for b in data.train_batches(64, epoch_seed(3, 2))]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


# --------------------------------------------------------------------------- resume


def _final_weights(run_root: Path, kind: str = "uhn") -> dict[str, torch.Tensor]:
    state = load_checkpoint(run_root / "checkpoints" / f"{kind}.pt")
    assert state["finished"]
    return state["source"]


@pytest.mark.parametrize(
    ("train", "stop_after", "checkpoint_seconds", "last_checkpoint"),
    [
        ({"epochs": 4}, 2, 0.0, 2),  # killed right after an epoch checkpoint
        ({"steps": 10, "eval_every": 3}, 5, 0.0, 3),  # killed two steps past the step-3 checkpoint
        ({"epochs": 4}, 3, 3600.0, 0),  # short epochs: only the end of the init phase was saved
    ],
)
@pytest.mark.parametrize("micro_shards", [0, DEFAULT_MICRO_SHARDS], ids=["default", "exact"])
def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(
    tmp_path: Path, train: dict, stop_after: int, checkpoint_seconds: float, last_checkpoint: int, micro_shards: int
) -> None:
    """Bit-exact on resume either way: the default (plain) step and the exact one."""
    plan = with_dropout(tiny_plan(**train))
    start_run(plan, tmp_path / "whole", options("both", micro_shards=micro_shards))
    killing = options(
        "both", observers=(KillAfter(stop_after),), checkpoint_seconds=checkpoint_seconds, micro_shards=micro_shards
    )
    with pytest.raises(RunInterrupted):
        start_run(plan, tmp_path / "killed", killing)
    killed = load_checkpoint(tmp_path / "killed" / "checkpoints" / "uhn.pt")
    assert not killed["finished"] and killed["units_done"] == last_checkpoint
    summary = resume_run(tmp_path / "killed", options())  # the run's own arithmetic, from run.json
    step = "exact" if micro_shards else "plain"
    assert summary["train_step"] == {"uhn": step, "direct": step}
    for kind in ("uhn", "direct"):
        whole, resumed = _final_weights(tmp_path / "whole", kind), _final_weights(tmp_path / "killed", kind)
        assert whole.keys() == resumed.keys()
        for name in whole:
            assert torch.equal(whole[name], resumed[name]), (kind, name)
    assert summary["uhn"] == json.loads((tmp_path / "whole" / "summary.json").read_text())["uhn"]
    # What the killed run logged past its checkpoint is logged once, by the resumed run.
    assert logged(tmp_path / "killed") == logged(tmp_path / "whole")


def test_a_run_killed_in_its_final_evaluation_resumes_to_the_same_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = tiny_plan(epochs=2)
    start_run(plan, tmp_path / "whole", options("both"))
    real_evaluate = trainer_module.evaluate_source

    def killed_in_the_direct_evaluation(source, *args, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(source, DirectSource):
            raise RunInterrupted("killed")
        return real_evaluate(source, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "evaluate_source", killed_in_the_direct_evaluation)
    with pytest.raises(RunInterrupted):
        start_run(plan, tmp_path / "killed", options("both"))
    monkeypatch.undo()
    resume_run(tmp_path / "killed", options())
    _assert_same_final_weights(tmp_path / "whole", tmp_path / "killed")
    assert logged(tmp_path / "killed") == logged(tmp_path / "whole")


def _assert_same_final_weights(a: Path, b: Path) -> None:
    for kind in ("uhn", "direct"):
        first, second = _final_weights(a, kind), _final_weights(b, kind)
        assert first.keys() == second.keys()
        for name in first:
            assert torch.equal(first[name], second[name]), (kind, name)


@pytest.mark.parametrize(
    ("train", "signal_number", "at_step", "phase", "steps_done", "units_done"),
    [
        ({"epochs": 4}, signal.SIGINT, 5, "uhn", 5, 1),  # mid-epoch: 2 of epoch 2's 3 steps
        ({"epochs": 4}, signal.SIGTERM, 12 + 7, "direct", 7, 2),  # in the second phase
        ({"steps": 10, "eval_every": 4}, signal.SIGINT, 6, "uhn", 6, 6),
    ],
)
def test_signal_saves_the_current_step_and_the_resumed_run_ends_as_an_uninterrupted_one(
    tmp_path: Path, train: dict, signal_number: int, at_step: int, phase: str, steps_done: int, units_done: int
) -> None:
    plan = with_dropout(tiny_plan(**train))
    start_run(plan, tmp_path / "whole", options("both", checkpoint_seconds=3600.0))
    calls = {"n": 0}

    class SignalAfterStep:
        def after_step(self, event: StepEvent) -> None:
            calls["n"] += 1
            if calls["n"] == at_step:  # arrives before the step's end is acted on, as Ctrl-C would
                os.kill(os.getpid(), signal_number)

    stopping = options("both", checkpoint_seconds=3600.0, observers=(SignalAfterStep(),))
    with pytest.raises(RunStopped, match=f"{signal.Signals(signal_number).name}: stopped the {phase} phase") as stopped:
        start_run(plan, tmp_path / "stopped", stopping)
    assert stopped.value.exit_code == 128 + signal_number
    assert signal.getsignal(signal_number) is not None and calls["n"] == at_step  # stopped right after the step
    state = load_checkpoint(tmp_path / "stopped" / "checkpoints" / f"{phase}.pt")
    assert (state["steps_done"], state["units_done"], state["finished"]) == (steps_done, units_done, False)
    resume_run(tmp_path / "stopped", options(checkpoint_seconds=3600.0))
    _assert_same_final_weights(tmp_path / "whole", tmp_path / "stopped")
    assert logged(tmp_path / "stopped") == logged(tmp_path / "whole")


def test_signal_handlers_are_restored_and_a_second_signal_abandons_at_once() -> None:
    before = signal.getsignal(signal.SIGINT)
    requests: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        with StopSignals(requests.append) as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.requested == signal.SIGINT and requests == ["SIGINT"]
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


# --------------------------------------------------------------------------- activation checkpointing


def test_target_segments_give_the_loss_and_gradients_of_the_plain_forward() -> None:
    plan = tiny_plan("text_classification")  # embedding, attention, linear: three segments
    target = DeviceTarget(plan.targets[0])
    source = make_source("uhn", plan, target, seed=0)
    data = load_task_data(plan.targets[0].spec.task)
    batch = next(data.train_batches(64, seed=0))
    results = []
    for segments in (0, 3):
        source.zero_grad()
        torch.manual_seed(1)
        outputs = forward_in_segments(target, source.flat(), segments, **batch.model_kwargs())
        loss = METRICS[data.metric].loss(*batch.select(outputs))
        loss.backward()
        results.append((float(loss.detach()), [p.grad.clone() for p in source.parameters() if p.grad is not None]))
    (plain_loss, plain_grads), (segmented_loss, segmented_grads) = results
    assert segmented_loss == pytest.approx(plain_loss, rel=1e-6)
    assert len(plain_grads) == len(segmented_grads) > 0
    for plain, segmented in zip(plain_grads, segmented_grads):
        torch.testing.assert_close(segmented, plain, rtol=1e-5, atol=1e-7)


def test_train_target_segments_trains_as_without(tmp_path: Path) -> None:
    plain = with_dropout(tiny_plan(epochs=2))
    spec = plain.targets[0].spec
    segmented = compile_spec(spec.model_copy(update={"train": spec.train.model_copy(update={"target_segments": 2})}))
    start_run(plain, tmp_path / "plain", options())
    start_run(segmented, tmp_path / "segmented", options())
    plain_losses = [r["loss"] for r in train_records(tmp_path / "plain")]
    assert [r["loss"] for r in train_records(tmp_path / "segmented")] == pytest.approx(plain_losses, rel=1e-5)


# --------------------------------------------------------------------------- NaN guard


@pytest.mark.parametrize("micro_shards", [0, DEFAULT_MICRO_SHARDS], ids=["default", "exact"])
def test_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, micro_shards: int
) -> None:
    real_loss = Accuracy.loss
    calls = {"n": 0}
    losses_per_step = micro_shards or 1  # the exact step takes one loss per micro-shard

    def loss_turning_nan(self, outputs, targets):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        loss = real_loss(self, outputs, targets)
        # Step 8's (first micro-shard's) loss.
        return loss * float("nan") if calls["n"] == 7 * losses_per_step + 1 else loss

    monkeypatch.setattr(Accuracy, "loss", loss_turning_nan)
    plan = tiny_plan(epochs=4)  # 192 training examples / batch 64: 3 steps per epoch
    with pytest.raises(TrainingDiverged, match=r"nan at step 8 \(epoch 3, batch 2/3\)") as err:
        start_run(plan, tmp_path / "run", options(micro_shards=micro_shards))
    assert "checkpoints/uhn.pt (after epoch 2)" in str(err.value)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "uhn.pt")
    assert state["units_done"] == 2 and not state["finished"]
    assert all(torch.isfinite(t).all() for t in state["source"].values())
    assert not (tmp_path / "run" / "summary.json").exists()
