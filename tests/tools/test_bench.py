"""``uhn bench``: the report's shape on a tiny spec (no timing assertions), the naive
baseline skipped rather than run when it would not fit, and the target's segmented
(checkpointed) forward that --target-segments times."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from typer.testing import CliRunner

import uhn_runtime.train.steps as steps_module
from tests.conftest import skeleton_flat
from tests.tiny_specs import tiny_plan, tiny_spec, tiny_spec_data
from uhn_cli.main import app
from uhn_runtime.data.synthetic import synthetic_batch
from uhn_runtime.model.target import DeviceTarget
from uhn_runtime.model.target_segments import forward_in_segments, segment_bounds
from uhn_runtime.train.draws import architecture_draw
from uhn_runtime.train.precision import Precision
from uhn_spec import ExperimentSpec, compile_spec
from uhn_spec.errors import UHNError
from uhn_spec.spec import GeneratorSpec
from uhn_tools.bench import BenchOptions, render_report, run_bench
from uhn_tools.bench.flops import useful_flops_per_weight
from uhn_tools.bench.run import run_case, worker_failure
from uhn_tools.bench.steps import measure_family_step
from uhn_tools.bench.training import NaiveSource
from uhn_tools.bench.worker import worker_main


def test_report_has_the_fields_the_issue_asks_for() -> None:
    plan = tiny_plan("image_classification")
    report = run_bench(plan, BenchOptions(repeats=1, batch=8, square=64))  # a small peak product: quick on any CPU
    n = plan.targets[0].num_params
    assert isinstance(report["device"], str) and report["device"].startswith("cpu")
    assert report["num_params"] == n
    gen, train = report["generate"], report["train_step"]
    for key in ("seconds", "weights_per_s", "vs_naive", "matmul_fraction"):
        assert isinstance(gen[key], float) and gen[key] > 0, key
    for key in ("seconds", "vs_naive"):
        assert isinstance(train[key], float) and train[key] > 0, key
    assert gen["weights_per_s"] == pytest.approx(n / gen["seconds"])
    assert isinstance(report["peak_memory_bytes"], int) and report["peak_memory_bytes"] > 0
    assert set(report["bytes_per_weight"]) == {"generate", "train_step"}
    naive = report["naive"]
    assert naive["generate"]["seconds"] > 0 and naive["train_step"]["seconds"] > 0
    assert gen["vs_naive"] == pytest.approx(naive["generate"]["seconds"] / gen["seconds"])
    assert naive["max_abs_diff"] <= 1e-4 * max(1.0, naive["reference_scale"])  # the same weights
    assert gen["layout_seconds"] > 0  # building the work units once, after loading the plan
    assert gen["layout_fraction"] == pytest.approx(gen["layout_seconds"] / gen["seconds"])
    flops = useful_flops_per_weight(plan.generator)
    assert gen["matmul_fraction"] == pytest.approx(flops * n / gen["seconds"] / report["matmul"]["square_flops_per_s"])
    json.dumps(report)  # plain data


def test_naive_is_reported_as_null_when_it_would_not_fit(tmp_path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(json.dumps(tiny_spec_data("formula_regression")))  # JSON is YAML
    result = CliRunner().invoke(
        app,
        [
            "bench",
            str(spec),
            "--json",
            "--repeats",
            "1",
            "--batch",
            "8",
            "--naive-max-gib",
            "1e-9",
            "--matmul-size",
            "64",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{") :])
    assert report["naive"] is None
    assert "GiB" in report["naive_skipped"]
    assert report["generate"]["vs_naive"] is None and report["train_step"]["vs_naive"] is None
    assert report["generate"]["matmul_fraction"] > 0
    assert report["matmul"]["square"] == 64 and report["options"]["square"] == 64


def test_bad_options_are_one_line_errors(tmp_path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(json.dumps(tiny_spec_data()))
    result = CliRunner().invoke(app, ["bench", str(spec), "--precision", "fp8"])
    assert result.exit_code == 2
    assert "--precision" in result.output


def test_a_failing_worker_is_one_line_without_its_frames(tmp_path) -> None:
    plan_path = tmp_path / "plan.pt"
    tiny_plan().save(plan_path)
    with pytest.raises(UHNError) as caught:  # the worker raises, with its traceback on its stderr
        run_case(plan_path, "generate", BenchOptions(repeats=1, batch=8, target="nope"))
    message = str(caught.value)
    assert message.startswith("bench case 'generate' failed (exit 1): ") and "'nope'" in message
    assert "\n" not in message and "Traceback" not in message and 'File "' not in message


def test_worker_failures_read_as_one_line() -> None:
    frames = 'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\n    f()\n'
    out_of_memory = (
        frames + "RuntimeError: [enforce fail at alloc_cpu.cpp:117] data.\nDefaultCPUAllocator: not enough memory\n"
    )
    assert worker_failure(1, out_of_memory) == (
        "failed (exit 1): RuntimeError: [enforce fail at alloc_cpu.cpp:117] data. "
        "DefaultCPUAllocator: not enough memory"
    )
    assert worker_failure(-9, "").startswith("was killed by SIGKILL (out of memory?")
    assert worker_failure(0, "").startswith("printed no result")
    long = worker_failure(1, frames + "ValueError: " + "x" * 1000)
    assert len(long) < 340 and long.endswith("...")


def test_segmented_forward_equals_the_plain_forward() -> None:
    spec = tiny_spec("text_classification")
    target = DeviceTarget(compile_spec(spec).targets[0])
    batch = synthetic_batch(spec.task, 8, torch.device("cpu"))
    flat = skeleton_flat(target).requires_grad_()
    plain = target.forward(flat, **batch.model_kwargs())
    (plain_grad,) = torch.autograd.grad(plain.square().sum(), flat)
    segmented = forward_in_segments(target, flat, 2, **batch.model_kwargs())
    (segmented_grad,) = torch.autograd.grad(segmented.square().sum(), flat)
    torch.testing.assert_close(segmented, plain)
    torch.testing.assert_close(segmented_grad, plain_grad)


def test_segments_cover_every_layer_once() -> None:
    assert segment_bounds(56, 8) == [(0, 7), (7, 14), (14, 21), (21, 28), (28, 35), (35, 42), (42, 49), (49, 56)]
    assert segment_bounds(3, 8) == [(0, 1), (1, 2), (2, 3)]
    assert segment_bounds(20, 3) == [(0, 7), (7, 13), (13, 20)]


def test_useful_flops_follow_the_documented_formula() -> None:
    # 2 * (2m*d + blocks*2*d*d + d): the large config is the issue's ~1.05 MFLOP floor + blocks.
    assert useful_flops_per_weight(GeneratorSpec()) == 2 * (2 * 2048 * 128 + 2 * 2 * 128 * 128 + 128)


def test_compile_benchmark_reports_the_issues_figures() -> None:
    """benchmarks/compile_bench.py on CNN-56 and a 3-target family: sizes checked, times only reported."""
    from benchmarks.compile_bench import DEFAULT_SPEC, bench_family, bench_single, render

    single = bench_single(DEFAULT_SPEC, repeats=1)
    assert single["num_params"] == 850_986
    assert single["plan_bytes"] < 2**20  # issue #10: CNN-56 plan under 1 MB (17 MB as index rows)
    family = bench_family(3, seed=0)
    assert 269_034 <= family["num_params_min"] <= family["num_params_max"] <= 1_072_586
    assert family["peak_memory_bytes"] >= family["resident_before_bytes"] > 0
    text = render({"machine": "cpu", "load_average": [0.0], "single": single, "family": family})
    assert "3 CNN width variants" in text


# --------------------------------------------------------------------------- the trainer's step


class StepCalls:
    """Counts the calls of each step strategy (and of the naive weight source), wrapping them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        for strategy in (steps_module.PlainStep, steps_module.ExactStep):
            monkeypatch.setattr(strategy, "__call__", self.counted(strategy.__call__, strategy.name))
        monkeypatch.setattr(NaiveSource, "generate", self.counted(NaiveSource.generate, "naive generation"))

    def counted(self, real, name: str):  # type: ignore[no-untyped-def]
        def call(*args, **kwargs):  # type: ignore[no-untyped-def]
            self.calls.append(name)
            return real(*args, **kwargs)

        return call


def saved_plan(tmp_path, plan) -> str:  # type: ignore[no-untyped-def]
    plan.save(tmp_path / "plan.pt")
    return str(tmp_path / "plan.pt")


@pytest.mark.parametrize(
    ("case", "calls"),
    [("train_step", ["plain"]), ("exact_train_step", ["exact"]), ("naive_train_step", ["plain", "naive generation"])],
)
def test_the_bench_times_the_trainers_own_step(
    tmp_path, monkeypatch: pytest.MonkeyPatch, case: str, calls: list[str]
) -> None:
    """Every timed call (and the warm-up) is Trainer.train_step's strategy: the default (plain)
    step, the exact one with micro-shards, and the naive generator as the same step's source."""
    counted = StepCalls(monkeypatch)
    options = BenchOptions(repeats=2, batch=8)
    result = worker_main(case, saved_plan(tmp_path, tiny_plan()), json.dumps(asdict(options)))
    assert counted.calls == calls * (options.repeats + 1)
    assert result["step"] == calls[0] and len(result["times"]) == options.repeats
    assert result["micro_shards"] == (8 if case == "exact_train_step" else 0)


def test_the_exact_step_is_reported_as_not_applicable_to_batch_norm(tmp_path) -> None:
    data = tiny_spec_data()
    data["layers"] = [data["layers"][0], {"kind": "norm", "type": "batch", "features": 12}, data["layers"][1]]
    plan = compile_spec(ExperimentSpec.model_validate(data))
    options = json.dumps(asdict(BenchOptions(repeats=1, batch=8)))
    assert "BatchNorm" in worker_main("exact_train_step", saved_plan(tmp_path, plan), options)["not_applicable"]


def test_the_report_gives_the_default_and_the_exact_step_and_their_ratio() -> None:
    plan = tiny_plan()
    report = run_bench(plan, BenchOptions(repeats=1, batch=8, naive=False, square=64))
    train, exact = report["train_step"], report["exact_train_step"]
    assert (train["step"], exact["step"], exact["micro_shards"]) == ("plain", "exact", 8)
    assert exact["vs_default"] == pytest.approx(exact["seconds"] / train["seconds"])
    text = render_report(report)
    assert "exact step" in text and f"{exact['vs_default']:.2f}x the default step" in text


def test_the_family_step_is_the_family_trainers_on_the_architectures_its_sampler_draws(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.runtime.train.test_family_run import family_plan
    from uhn_runtime.train.trainer import Trainer

    plan = family_plan(tmp_path)
    trained: list[tuple[int, tuple[str, ...]]] = []
    real = Trainer.train_step

    def recorded(self, step, epoch, batches):  # type: ignore[no-untyped-def]
        loss, work = real(self, step, epoch, batches)
        trained.append((step, tuple(w.target.plan.name for w in work)))
        return loss, work

    monkeypatch.setattr(Trainer, "train_step", recorded)
    result = measure_family_step(plan, BenchOptions(repeats=1, batch=8), torch.device("cpu"), Precision("cpu", None))
    seen = [i for i, t in enumerate(plan.targets) if t.split == "seen"]
    cfg = plan.targets[0].spec.train
    draws = [architecture_draw(cfg.seed, step, len(seen), cfg.models_per_step) for step in range(result["steps"] + 1)]
    expected = [(step, tuple(plan.targets[seen[j]].name for j in draw)) for step, draw in enumerate(draws)]
    assert trained == expected and result["step"] == "plain"  # the warm-up step 0, then the timed ones
