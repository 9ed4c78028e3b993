"""Multi-task runs: one UHN for the models of several tasks (reference-facts section 10):
the spec format and its errors, the weighted task draw, per-task data streams and resume
equality, each member's layout, per-task evaluation, the summary and export --task."""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from tests.conftest import REPO_ROOT, KillAfter, RecordSteps, RunInterrupted
from tests.tiny_specs import TINY_GENERATOR, tiny_spec_data
from uhn_cli.main import app
from uhn_runtime.model.target import DeviceTarget
from uhn_runtime.model.weights import UHNSource
from uhn_runtime.train.checkpoint import load_checkpoint
from uhn_runtime.train.draws import architecture_draw
from uhn_runtime.train.run import TrainOptions, resume_run, start_run
from uhn_runtime.train.task_sampling import adapted_probabilities
from uhn_spec import build_model, compile_spec
from uhn_spec.errors import SpecError, UHNError
from uhn_spec.metrics import ACCURACY, RMSE
from uhn_spec.modes.multitask import compile_multitask, load_multitask

TRAIN = {"steps": 12, "warmup": 2, "lr": 3.0e-3, "init_steps": 4, "init_lr": 1.0e-3, "seed": 3, "eval_every": 4}


def member(task_type: str, name: str, batch_size: int) -> dict[str, Any]:
    data = tiny_spec_data(task_type, batch_size=batch_size)
    data["name"] = name
    if task_type == "image_classification":  # dropout: the resumed run must restore the RNG
        first, *rest = data["layers"]  # a new list: tiny_specs' LAYERS is shared by every test
        data["layers"] = [{**first, "dropout": 0.2}, *rest]
    return data


def multitask_data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "tiny_multitask",
        "tasks": [
            {"spec": member("image_classification", "tiny_images", 64), "probability": 3},
            {"spec": member("formula_regression", "tiny_formula", 32), "probability": 1},
        ],
        "generator": {**TINY_GENERATOR, "structure_encoder": True, "structure_freqs": 4, "structure_heads": 2},
        "train": dict(TRAIN),
    }
    data.update(changes)
    return data


def multitask_file(tmp_path: Path, **changes: Any) -> Path:
    path = tmp_path / "tiny_multitask.yaml"
    path.write_text(yaml.safe_dump(multitask_data(**changes), sort_keys=False))
    return path


def options(**kw: Any) -> TrainOptions:
    kw.setdefault("progress", io.StringIO())
    kw.setdefault("checkpoint_seconds", 0.0)
    return TrainOptions(mode="uhn", device="cpu", **kw)


def spec_error(tmp_path: Path, **changes: Any) -> str:
    with pytest.raises(SpecError) as err:
        load_multitask(multitask_file(tmp_path, **changes))
    return str(err.value)


# --------------------------------------------------------------------------- the draw


def test_task_draw_is_a_pure_function_of_seed_and_step_with_the_given_probabilities() -> None:
    probabilities = [0.6, 0.3, 0.1]
    draws = [architecture_draw(5, step, 3, probabilities=probabilities)[0] for step in range(6000)]
    with torch.random.fork_rng():  # no global RNG is read (and the suite's is left as it was)
        torch.manual_seed(99)
        assert draws == [architecture_draw(5, step, 3, probabilities=probabilities)[0] for step in range(6000)]
    assert draws != [architecture_draw(6, step, 3, probabilities=probabilities)[0] for step in range(6000)]
    init = [architecture_draw(5, step, 3, stream="init", probabilities=probabilities)[0] for step in range(6000)]
    assert init != draws
    for draw in (draws, init):
        counts = Counter(draw)
        for position, p in enumerate(probabilities):
            assert counts[position] / len(draw) == pytest.approx(p, abs=0.025)
    assert architecture_draw(5, 3, 1, probabilities=[1.0]) == [0]


def test_a_task_with_a_tiny_probability_is_still_drawn_and_never_past_the_end() -> None:
    draws = {architecture_draw(0, step, 2, probabilities=[0.99, 0.01])[0] for step in range(2000)}
    assert draws == {0, 1}


# --------------------------------------------------------------------------- the spec


def test_probabilities_are_normalised_and_members_keep_task_and_batch_size(tmp_path: Path) -> None:
    multitask = load_multitask(multitask_file(tmp_path))
    assert multitask.probabilities == pytest.approx((0.75, 0.25))
    images, formula = multitask.members
    assert (images.train.batch_size, formula.train.batch_size) == (64, 32)
    assert images.task.synthetic.task_type == "image_classification"  # type: ignore[union-attr]
    assert formula.task.synthetic.task_type == "formula_regression"  # type: ignore[union-attr]
    for spec in multitask.members:  # the run's generator and schedule replace the members' own
        assert spec.generator.structure_encoder and spec.train.steps == TRAIN["steps"]
    plan = compile_multitask(multitask)
    assert [t.probability for t in plan.targets] == pytest.approx([0.75, 0.25])


@pytest.mark.parametrize("probability", [0, -1])
def test_probabilities_must_be_positive(tmp_path: Path, probability: float) -> None:
    tasks = multitask_data()["tasks"]
    tasks[1]["probability"] = probability
    message = spec_error(tmp_path, tasks=tasks)
    assert "tasks[1].probability: must be a positive number" in message and f"(got {probability})" in message, message


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"generator": dict(TINY_GENERATOR)}, "generator.structure_encoder: must be true"),
        (
            {"train": {**{k: v for k, v in TRAIN.items() if k != "steps"}, "epochs": 3}},
            "train.steps: a multi-task run counts steps",
        ),
        ({"tasks": []}, "tasks"),
    ],
)
def test_run_settings_are_checked(tmp_path: Path, changes: dict[str, Any], expected: str) -> None:
    assert expected in spec_error(tmp_path, **changes)


def test_members_need_their_own_names(tmp_path: Path) -> None:
    tasks = multitask_data()["tasks"]
    tasks[1]["spec"]["name"] = "tiny_images"
    message = spec_error(tmp_path, tasks=tasks)
    assert "tasks[1].spec.name: 'tiny_images' is also tasks[0]'s name" in message, message


def test_a_missing_member_file_names_the_member(tmp_path: Path) -> None:
    tasks = multitask_data()["tasks"]
    tasks[0]["spec"] = "nowhere.yaml"
    message = spec_error(tmp_path, tasks=tasks)
    assert "tasks[0].spec: spec file not found" in message and "tiny_multitask.yaml" in message, message


def test_a_member_spec_file_and_its_overrides(tmp_path: Path) -> None:
    (tmp_path / "formula.yaml").write_text(yaml.safe_dump(member("formula_regression", "tiny_formula", 32)))
    tasks = multitask_data()["tasks"]
    tasks[1] = {"spec": "formula.yaml", "probability": 1, "batch_size": 16, "set": ["task.synthetic.num_examples=128"]}
    formula = load_multitask(multitask_file(tmp_path, tasks=tasks)).members[1]
    assert formula.train.batch_size == 16 and formula.task.synthetic.num_examples == 128  # type: ignore[union-attr]


def test_shipped_multitask_specs_load(tmp_path: Path) -> None:
    specs = REPO_ROOT / "specs"
    paper = load_multitask(specs / "multitask_paper.yaml")
    assert dict(zip((m.name for m in paper.members), paper.probabilities)) == pytest.approx(
        {
            "mnist_mlp": 0.08,
            "cifar10_cnn44": 0.55,
            "cora_gcn": 0.04,
            "citeseer_gat": 0.04,
            "agnews_transformer2l": 0.18,
            "kan_kv": 0.11,
        }
    )
    assert paper.members[3].task.stands_in_for == "pubmed"
    assert paper.spec.train.steps == 200_000 and paper.spec.train.warmup == 1_000 and paper.spec.train.init_steps == 500
    demo = load_multitask(specs / "multitask_demo.yaml")
    assert [m.name for m in demo.members] == ["digits_mlp", "cora_gcn", "kan_kv"]


# --------------------------------------------------------------------------- layouts


def test_each_member_generates_the_layout_of_its_own_single_task_plan(tmp_path: Path) -> None:
    plan = compile_multitask(load_multitask(multitask_file(tmp_path)))
    source = UHNSource(plan, DeviceTarget(plan.targets[0], torch.device("cpu")), seed=0)
    for target in plan.targets:
        alone = compile_spec(target.spec).trained_target
        assert [(p.name, p.shape, p.offset, p.numel) for p in target.params] == [
            (p.name, p.shape, p.offset, p.numel) for p in alone.params
        ]
        flat = source.flat(DeviceTarget(target, torch.device("cpu")))
        assert flat.shape == (alone.num_params,)
        model = build_model(target.spec)
        assert sum(p.numel() for p in model.parameters()) == alone.num_params


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def multitask_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("multitask")
    spec = multitask_file(root)
    run = root / "run"
    result = CliRunner().invoke(app, ["train", str(spec), "-o", str(run), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "tiny_images accuracy" in result.output and "tiny_formula rmse" in result.output
    return run


def test_summary_has_a_per_task_table(multitask_run: Path) -> None:
    summary = json.loads((multitask_run / "summary.json").read_text())
    assert set(summary["tasks"]) == {"tiny_images", "tiny_formula"}
    assert summary["tasks"]["tiny_images"]["metric"] == "accuracy"
    assert summary["tasks"]["tiny_formula"]["metric"] == "rmse"
    assert 0.0 <= summary["tasks"]["tiny_images"]["uhn"] <= 1.0 and summary["tasks"]["tiny_formula"]["uhn"] > 0
    assert summary["task_probabilities"] == pytest.approx({"tiny_images": 0.75, "tiny_formula": 0.25})
    records = [json.loads(line) for line in (multitask_run / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r["test"] for r in records if r["event"] == "train" and "test" in r]
    assert len(evaluations) == 2 and all(set(e) == {"tiny_images", "tiny_formula"} for e in evaluations)  # steps 4, 8
    # Each interval's step time, evaluations left out, also per task (to compare with the
    # members' own runs: the step-time target).
    timed = [r for r in records if r["event"] == "train"]
    assert len(timed) == 3 and all(r["step_seconds"] > 0 for r in timed)
    assert all(set(r["step_seconds_by_task"]) <= {"tiny_images", "tiny_formula"} for r in timed)
    assert summary["task_sampling"]["mode"] == "fixed" and sum(summary["task_sampling"]["draws"].values()) == 12


def test_training_draws_each_task_and_takes_its_own_batches(tmp_path: Path) -> None:
    steps = RecordSteps()
    plan = compile_multitask(load_multitask(multitask_file(tmp_path)))
    start_run(plan, tmp_path / "run", options(observers=(steps,)))
    seen = [(name, size) for e in steps.events for name, size in zip(e.targets, e.batch_sizes, strict=True)]
    assert all(len(e.targets) == 1 for e in steps.events)
    probabilities = [t.probability for t in plan.targets]
    expected = [plan.targets[architecture_draw(3, s, 2, probabilities=probabilities)[0]].name for s in range(12)]
    assert [name for name, _ in seen] == expected
    assert {name: size for name, size in seen} == {"tiny_images": 64, "tiny_formula": 32}


def test_resumed_multitask_run_ends_with_the_weights_of_an_uninterrupted_run(tmp_path: Path) -> None:
    plan = compile_multitask(load_multitask(multitask_file(tmp_path)))
    start_run(plan, tmp_path / "whole", options())
    with pytest.raises(RunInterrupted):
        start_run(plan, tmp_path / "killed", options(observers=(KillAfter(6),)))  # mid-interval: resumes from step 4
    resume_run(tmp_path / "killed", options())
    whole = load_checkpoint(tmp_path / "whole" / "checkpoints" / "uhn.pt")
    resumed = load_checkpoint(tmp_path / "killed" / "checkpoints" / "uhn.pt")
    assert whole["finished"] and resumed["finished"]
    assert whole["source"].keys() == resumed["source"].keys()
    for key, value in whole["source"].items():
        assert torch.equal(value, resumed["source"][key]), key
    assert whole["models"] == resumed["models"]


def test_a_member_whose_data_cannot_load_stops_the_run_before_training(tmp_path: Path) -> None:
    tasks = multitask_data()["tasks"]
    tasks[1]["spec"]["task"] = {"dataset": "cora"}
    tasks[1]["spec"]["layers"] = [{"kind": "gcn", "in_features": 1433, "out_features": 7}]
    tasks[1]["spec"]["family"] = "gcn"
    plan = compile_multitask(load_multitask(multitask_file(tmp_path, tasks=tasks)))
    with pytest.raises(UHNError, match=r"^task tiny_formula \(cora\): "):
        start_run(plan, tmp_path / "run", options(data_root=str(tmp_path / "empty")))
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


def test_a_multitask_run_refuses_the_direct_baseline(tmp_path: Path) -> None:
    plan = compile_multitask(load_multitask(multitask_file(tmp_path)))
    with pytest.raises(UHNError, match="--mode both"):
        start_run(plan, tmp_path / "run", TrainOptions(mode="both", device="cpu", progress=io.StringIO()))


# --------------------------------------------------------------------------- export and inspect


def test_export_task_writes_the_member_that_evaluate_reads(multitask_run: Path, tmp_path: Path) -> None:
    summary = json.loads((multitask_run / "summary.json").read_text())
    for name in ("tiny_images", "tiny_formula"):
        out = tmp_path / f"{name}.safetensors"
        result = CliRunner().invoke(
            app, ["export", str(multitask_run), "--task", name, "-o", str(out), "--device", "cpu"]
        )
        assert result.exit_code == 0, result.output
        evaluated = CliRunner().invoke(app, ["evaluate", str(out), "--device", "cpu"])
        assert evaluated.exit_code == 0, evaluated.output
        assert float(evaluated.output.split()[-1]) == pytest.approx(summary["tasks"][name]["uhn"], abs=1e-4)


def test_export_task_names_the_members_when_the_task_is_unknown(multitask_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.safetensors"
    result = CliRunner().invoke(
        app, ["export", str(multitask_run), "--task", "nope", "-o", str(out), "--device", "cpu"]
    )
    assert result.exit_code == 2
    assert "--task: no member 'nope'; give one of tiny_images, tiny_formula" in result.output
    assert not out.exists()


def test_evaluate_a_multitask_run_prints_every_task_with_its_metric(multitask_run: Path) -> None:
    result = CliRunner().invoke(app, ["evaluate", str(multitask_run), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    summary = json.loads((multitask_run / "summary.json").read_text())
    for name, row in summary["tasks"].items():
        line = next(line for line in result.output.splitlines() if line.startswith(name))
        assert row["metric"] in line and f"{row['uhn']:.4f}" in line


def test_inspect_json_lists_members_with_params_and_probability(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["inspect", str(multitask_file(tmp_path)), "--json"])
    assert result.exit_code == 0, result.output
    targets = json.loads(result.output)["targets"]
    assert [(t["name"], t["probability"]) for t in targets] == [("tiny_images", 0.75), ("tiny_formula", 0.25)]
    plan = compile_multitask(load_multitask(multitask_file(tmp_path)))
    assert [t["num_params"] for t in targets] == [t.num_params for t in plan.targets]


# --------------------------------------------------------------------------- adaptive sampling

ADAPTIVE = {"mode": "adaptive", "every": 3, "floor": 0.5}


def adaptive_file(tmp_path: Path, references: tuple[float, float] = (0.99, 0.001), **sampling: Any) -> Path:
    """The tiny multi-task file with adaptive sampling; the formula member's reference is far
    below what 12 steps reach, so it lags and the re-weighting moves towards it."""
    tasks = multitask_data()["tasks"]
    for task, reference in zip(tasks, references):
        task["reference"] = reference
    return multitask_file(tmp_path, tasks=tasks, sampling={**ADAPTIVE, **sampling})


def test_error_ratio_puts_accuracy_and_rmse_on_one_scale() -> None:
    assert ACCURACY.error_ratio(0.96, 0.98) == pytest.approx(2.0)  # twice the errors
    assert RMSE.error_ratio(0.5, 0.05) == pytest.approx(10.0)
    assert ACCURACY.error_ratio(0.99, 0.98) < 1.0  # ahead of its reference


def test_adapted_probabilities_move_towards_the_laggard_and_keep_the_floor() -> None:
    base = (0.4, 0.3, 0.3)
    assert adapted_probabilities(base, (1.0, 0.5, 1.0), floor=0.5, strength=1.0) == pytest.approx(base)  # nobody lags
    moved = adapted_probabilities(base, (3.0, 1.0, 12.0), floor=0.5, strength=1.0)
    assert math.fsum(moved) == pytest.approx(1.0)
    assert moved[2] > base[2] and moved[1] < base[1]
    assert all(p >= 0.5 * b for p, b in zip(moved, base))  # each keeps its floor


def test_validate_and_inspect_show_adaptive_sampling_and_the_references(tmp_path: Path) -> None:
    path = adaptive_file(tmp_path)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0 and "; sampling adaptive every 3 steps" in result.output, result.output
    result = CliRunner().invoke(app, ["inspect", str(path), "--json"])
    assert [t["reference"] for t in json.loads(result.output)["targets"]] == [0.99, 0.001]


def test_adaptive_sampling_needs_every_reference(tmp_path: Path) -> None:
    message = spec_error(tmp_path, sampling=ADAPTIVE)
    assert "tasks[0].reference: sampling.mode adaptive compares every member" in message, message
    assert "uhn train MULTITASK --model tiny_images" in message, message


@pytest.mark.parametrize(
    ("references", "sampling", "expected"),
    [
        ((1.0, 0.1), {}, "tasks[0].reference: 1.0 is not an accuracy in (0, 1)"),
        ((0.9, -0.1), {}, "tasks[1].reference: -0.1 is not a positive RMSE"),
        ((0.9, 0.1), {"every": 12}, "sampling.every: 12 is not below train.steps (12)"),
        ((0.9, 0.1), {"floor": 1.0}, "sampling.floor"),
        ((0.9, 0.1), {"mode": "pcgrad"}, "sampling.mode"),
    ],
)
def test_sampling_settings_are_checked(
    tmp_path: Path, references: tuple[float, float], sampling: dict[str, Any], expected: str
) -> None:
    with pytest.raises(SpecError) as err:
        load_multitask(adaptive_file(tmp_path, references, **sampling))
    assert expected in str(err.value), str(err.value)


def test_adaptive_sampling_draws_by_the_logged_reweightings_and_is_deterministic(tmp_path: Path) -> None:
    steps, again = RecordSteps(), RecordSteps()
    plan = compile_multitask(load_multitask(adaptive_file(tmp_path)))
    assert plan.task_sampling is not None and plan.task_sampling["mode"] == "adaptive"
    first = start_run(plan, tmp_path / "a", options(observers=(steps,)))["task_sampling"]
    second = start_run(plan, tmp_path / "b", options(observers=(again,)))["task_sampling"]
    drawn = [name for e in steps.events for name in e.targets]
    assert (
        drawn == [name for e in again.events for name in e.targets] and first == second
    )  # same seed: same draws, same re-weightings
    assert [u["step"] for u in first["updates"]] == [3, 6, 9]
    assert all(u["probabilities"]["tiny_formula"] > 0.25 for u in first["updates"])  # the laggard gains
    # Each step drew with the probabilities of the latest re-weighting at or before it.
    names = [t.name for t in plan.targets]
    expected = []
    for step in range(12):
        current = [u for u in first["updates"] if u["step"] <= step]
        probabilities = (
            [current[-1]["probabilities"][n] for n in names] if current else [t.probability for t in plan.targets]
        )
        expected.append(names[architecture_draw(3, step, 2, probabilities=probabilities)[0]])
    assert drawn == expected
    assert first["draws"] == {name: expected.count(name) for name in names}
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "sampling"] == [3, 6, 9]
    assert json.loads((tmp_path / "a" / "run.json").read_text())["task_sampling"]["mode"] == "adaptive"


def run_whole_and_resumed(plan: Any, tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train ``plan`` uninterrupted ("whole") and killed at step 6 then resumed ("killed");
    assert both end with the same generator and models; return both summaries."""
    whole_summary = start_run(plan, tmp_path / "whole", options())
    with pytest.raises(RunInterrupted):
        start_run(plan, tmp_path / "killed", options(observers=(KillAfter(6),)))
    resumed_summary = resume_run(tmp_path / "killed", options())
    whole = load_checkpoint(tmp_path / "whole" / "checkpoints" / "uhn.pt")
    resumed = load_checkpoint(tmp_path / "killed" / "checkpoints" / "uhn.pt")
    for key, value in whole["source"].items():
        assert torch.equal(value, resumed["source"][key]), key
    assert whole["models"] == resumed["models"]
    return whole_summary, resumed_summary


def test_resumed_adaptive_run_ends_with_the_weights_of_an_uninterrupted_run(tmp_path: Path) -> None:
    """Killed at step 6 (after the re-weighting at 6), resumed from the checkpoint at step 4,
    which holds the re-weighting at 3 and the steps of the window under way."""
    whole_summary, resumed_summary = run_whole_and_resumed(
        compile_multitask(load_multitask(adaptive_file(tmp_path))), tmp_path
    )
    assert whole_summary["task_sampling"] == resumed_summary["task_sampling"]


def fake_run(root: Path, summary: dict[str, Any], records: list[dict[str, Any]]) -> Path:
    root.mkdir()
    (root / "summary.json").write_text(json.dumps(summary))
    lines = [{"phase": "uhn", "event": "train", **r} for r in records]
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return root


def test_step_time_benchmark_weighs_the_members_own_step_times(tmp_path: Path) -> None:
    """The ratio of the step-time target, from the runs' logged step_seconds (first interval
    left out): 0.5 s per multi-task step against 0.25 * 1.0 + 0.75 * 0.2 = 0.4 s."""
    from benchmarks.multitask_step_time import measure

    mt_summary = {"task_probabilities": {"a": 0.25, "b": 0.75}, "task_sampling": {"draws": {"a": 10, "b": 30}}}
    multitask = fake_run(
        tmp_path / "mt",
        mt_summary,
        [
            {"step": 10, "step_seconds": 9.0, "step_seconds_by_task": {"a": 9.0, "b": 9.0}},  # left out: first interval
            {"step": 30, "step_seconds": 0.5, "step_seconds_by_task": {"a": 1.2, "b": 0.3}},
            {"step": 40, "step_seconds": 0.5, "step_seconds_by_task": {"a": 1.2, "b": 0.3}},
        ],
    )
    single_a = fake_run(
        tmp_path / "a", {"spec": "a"}, [{"step": 5, "step_seconds": 7.0}, {"step": 10, "step_seconds": 1.0}]
    )
    single_b = fake_run(
        tmp_path / "b", {"spec": "b"}, [{"step": 5, "step_seconds": 7.0}, {"step": 10, "step_seconds": 0.2}]
    )
    report = measure(multitask, [single_a, single_b], all_intervals=False)
    assert report["vs_probabilities"] == pytest.approx(0.5 / 0.4)
    assert report["vs_draws"] == pytest.approx(0.5 / 0.4)  # the run drew a and b in proportion
    assert report["member_step_vs_own_run"] == pytest.approx({"a": 1.2, "b": 1.5})


def test_bench_compares_the_multitask_step_with_each_members_own_in_one_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from uhn_runtime.train.precision import Precision
    from uhn_runtime.train.trainer import Trainer
    from uhn_tools.bench import BenchOptions, run_bench
    from uhn_tools.bench.steps import measure_multitask_step

    trained: list[tuple[str, int, tuple[str, ...]]] = []  # every step is a trainer's own
    real = Trainer.train_step

    def recorded(self, step, epoch, batches):  # type: ignore[no-untyped-def]
        loss, work = real(self, step, epoch, batches)
        trained.append((self.plan.mode, step, tuple(w.target.plan.name for w in work)))
        return loss, work

    monkeypatch.setattr(Trainer, "train_step", recorded)
    plan = compile_multitask(load_multitask(multitask_file(tmp_path)))
    step = measure_multitask_step(plan, BenchOptions(repeats=1, batch=8), torch.device("cpu"), Precision("cpu", None))
    monkeypatch.undo()
    names = [t.name for t in plan.targets]
    for name in names:  # each member's own single-task trainer: a warm-up, then its timed streak
        own = [s for mode, s, done in trained if mode == "single" and done == (name,)]
        assert own == list(range(step["own_steps_per_member"] + 1))
    timed = [(s, done) for mode, s, done in trained if mode == "multitask" and 1 <= s <= step["steps"]]
    assert [s for s, _ in timed] == list(range(1, step["steps"] + 1))
    assert list(step["own_mean_seconds"]) == names and step["probabilities"] == {
        n: t.probability for n, t in zip(names, plan.targets)
    }
    # The drawn steps are the ones a run takes: the same draws as `uhn train`'s task phase.
    seed = plan.targets[0].spec.train.seed
    expected = Counter(architecture_draw(seed, i, 2, 1, "train", [0.75, 0.25])[0] for i in range(1, step["steps"] + 1))
    assert step["drawn"] == {names[i]: expected[i] for i in range(2)} and step["steps"] == len(step["times"])
    assert Counter(done[0] for _, done in timed) == Counter({names[i]: expected[i] for i in range(2)})
    weighted = sum(step["probabilities"][n] * step["own_mean_seconds"][n] for n in names)
    assert step["weighted_own_seconds"] == pytest.approx(weighted)
    assert step["vs_probabilities"] == pytest.approx(step["mean_seconds"] / weighted)
    report = run_bench(plan, BenchOptions(repeats=1, batch=8, naive=False, square=64))
    assert set(report["multitask"]) >= {"vs_probabilities", "vs_draws", "own_mean_seconds"} and "family" not in report
