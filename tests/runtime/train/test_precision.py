"""train.precision: what ``auto`` picks on which hardware (the capability mocked), that an
explicit choice is honoured and recorded with the run, and how far bf16 generation may move
the generated weights and the generator's gradients from fp32 generation."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from typer.testing import CliRunner

import uhn_runtime.train.precision as precision_module
import uhn_tools.bench.flops as flops
from tests.conftest import REPO_ROOT
from tests.tiny_specs import tiny_plan, tiny_spec_data
from uhn_cli.app import load_target_source
from uhn_cli.main import app
from uhn_runtime.io.export import load_trained_source
from uhn_runtime.model.generator import UHNGenerator
from uhn_runtime.model.naive import naive_generate
from uhn_runtime.model.target import DeviceTarget
from uhn_runtime.train.precision import Precision
from uhn_runtime.train.run import TrainOptions, start_run
from uhn_runtime.train.run_dir import RunDir
from uhn_runtime.train.run_record import RecordError
from uhn_spec import ExperimentSpec, compile_spec
from uhn_spec.enums import TaskType
from uhn_spec.errors import UHNError
from uhn_spec.spec import GeneratorSpec
from uhn_tools.bench import BenchOptions, render_report, run_bench
from uhn_tools.bench.flops import useful_flops_per_weight

CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)
IMAGE = frozenset({TaskType.IMAGE_CLASSIFICATION})
REPO = REPO_ROOT
SPECS = REPO / "specs"


@pytest.mark.parametrize(
    ("features", "expected", "named"),
    [
        (frozenset(), torch.float32, "neither AMX nor AVX512-BF16"),
        (frozenset({"avx512_bf16"}), torch.bfloat16, "avx512_bf16"),  # ~2x fp32, parity within seed noise
        (frozenset({"amx_bf16"}), torch.bfloat16, "amx_bf16"),
        (frozenset({"avx512_bf16", "amx_bf16"}), torch.bfloat16, "amx_bf16"),
    ],
)
def test_auto_on_the_cpu_picks_bf16_where_the_hardware_accelerates_it(monkeypatch, features, expected, named) -> None:
    monkeypatch.setattr(precision_module, "cpu_bf16_features", lambda: features)
    chosen = Precision.resolve("auto", CPU, IMAGE)  # a kind where bf16 keeps accuracy
    assert (chosen.dtype or torch.float32) == expected
    assert chosen.reason.startswith("auto: ")
    assert named in chosen.reason  # the run says which hardware it based the choice on


@pytest.mark.parametrize(
    ("capability", "expected"), [((7, 5), None), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)]
)
def test_auto_on_a_gpu_picks_bf16_with_bf16_tensor_cores(monkeypatch, capability, expected) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Mock GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: capability >= (8, 0))
    chosen = Precision.resolve("auto", CUDA, IMAGE)
    assert chosen.dtype == expected
    assert f"compute capability {capability[0]}.{capability[1]}" in chosen.reason


def test_an_explicit_precision_is_honoured_whatever_the_hardware_and_task(monkeypatch) -> None:
    monkeypatch.setattr(precision_module, "cpu_bf16_features", lambda: frozenset())
    assert Precision.resolve("bf16", CPU, IMAGE).dtype == torch.bfloat16
    monkeypatch.setattr(precision_module, "cpu_bf16_features", lambda: frozenset({"amx_bf16"}))
    assert Precision.resolve("bf16", CPU, {TaskType.GRAPH_NODE_CLASSIFICATION}).dtype == torch.bfloat16
    assert Precision.resolve("fp32", CPU, IMAGE).dtype is None
    with pytest.raises(UHNError, match="fp16 needs a CUDA device"):
        Precision.resolve("fp16", CPU, IMAGE)


def _shipped_kinds(name: str) -> frozenset[TaskType]:
    return load_target_source(SPECS / f"{name}.yaml").task_types


@pytest.mark.parametrize(
    ("spec", "kinds"),
    [
        ("kan_ellipj", "formula"),
        ("imdb_transformer1l", "text"),
        ("wine_mlp", "tabular"),  # not in the table at all
        ("multitask_demo", "formula"),  # its image and graph members alone would allow bf16
    ],
)
def test_auto_on_a_bf16_cpu_keeps_fp32_for_kinds_where_bf16_costs_or_is_unmeasured(monkeypatch, spec, kinds) -> None:
    monkeypatch.setattr(precision_module, "cpu_bf16_features", lambda: frozenset({"avx512_bf16"}))
    chosen = Precision.resolve("auto", CPU, _shipped_kinds(spec))
    assert chosen.dtype is None
    assert chosen.reason.startswith(f"auto: fp32 for {kinds} tasks: bf16 ")
    assert precision_module.PARITY_JSON in chosen.reason  # where the verdict comes from


@pytest.mark.parametrize(
    ("spec", "kinds"),
    [
        ("digits_mlp", "image"),
        ("digits_mlp_family", "image"),
        ("cifar10_cnn_mixed_depth", "image"),
        ("cora_gcn", "graph"),
        ("recursive_digits_k1", "image, recursive"),  # its leaf's kind and the chain's
    ],
)
def test_auto_on_a_bf16_cpu_picks_bf16_for_kinds_where_bf16_keeps_accuracy(monkeypatch, spec, kinds) -> None:
    monkeypatch.setattr(precision_module, "cpu_bf16_features", lambda: frozenset({"avx512_bf16"}))
    chosen = Precision.resolve("auto", CPU, _shipped_kinds(spec))  # a family: its members' kind
    assert chosen.dtype == torch.bfloat16
    assert chosen.reason.startswith(f"auto: bf16 for {kinds} tasks") and "avx512_bf16" in chosen.reason


def test_auto_keeps_fp32_for_a_kind_measured_to_cost_accuracy(monkeypatch) -> None:
    monkeypatch.setattr(precision_module, "cpu_bf16_features", lambda: frozenset({"amx_bf16"}))
    monkeypatch.setitem(precision_module.AUTO_BF16_BY_KIND, "graph", precision_module.COSTS)
    chosen = Precision.resolve("auto", CPU, {TaskType.GRAPH_NODE_CLASSIFICATION, TaskType.IMAGE_CLASSIFICATION})
    assert chosen.dtype is None
    assert chosen.reason.startswith("auto: fp32 for graph tasks: bf16 costs accuracy (")
    both = Precision.resolve("auto", CPU, {TaskType.GRAPH_NODE_CLASSIFICATION, TaskType.TEXT_CLASSIFICATION})
    assert "fp32 for graph, text tasks: bf16 costs accuracy for graph; not measured for text" in both.reason


def test_auto_without_bf16_hardware_is_fp32_whatever_the_task(monkeypatch) -> None:
    monkeypatch.setattr(precision_module, "cpu_bf16_features", lambda: frozenset())
    chosen = Precision.resolve("auto", CPU, IMAGE)
    assert chosen.dtype is None and "no bf16 matmul instructions" in chosen.reason


def test_the_auto_table_follows_the_parity_measurements() -> None:
    # One source of truth: each kind's verdict is what benchmarks/precision_parity.py wrote for
    # the specs standing for it: it costs if one of them costs, else is unmeasured while one is.
    entries = json.loads((REPO / precision_module.PARITY_JSON).read_text())["kinds"].values()
    assert {entry["kind"] for entry in entries} == set(precision_module.AUTO_BF16_BY_KIND)
    for kind, verdict in precision_module.AUTO_BF16_BY_KIND.items():
        measured = [entry for entry in entries if entry["kind"] == kind and entry["measured"]]
        for entry in measured:
            assert len(entry["seeds"]) >= 5, entry["spec"]
            worst = entry["fp32"]["max"] if entry["metric"] == "rmse" else entry["fp32"]["min"]
            better = (lambda a, b: a <= b) if entry["metric"] == "rmse" else (lambda a, b: a >= b)
            assert entry["bf16_keeps_accuracy"] == better(entry["bf16"]["mean"], worst), entry["spec"]
        if not all(entry["bf16_keeps_accuracy"] for entry in measured):
            assert verdict == precision_module.COSTS, kind
        elif len(measured) < sum(entry["kind"] == kind for entry in entries):
            assert verdict == precision_module.NOT_MEASURED, kind
        else:
            assert verdict == precision_module.KEEPS, kind


@pytest.mark.parametrize(
    ("task_type", "expected", "said"),
    [
        ("image_classification", "bf16", "auto: bf16 for image tasks"),
        ("text_classification", "fp32", "auto: fp32 for text tasks"),
    ],
)
def test_the_reason_for_autos_choice_is_recorded_with_the_run(
    monkeypatch, tmp_path: Path, task_type, expected, said
) -> None:
    monkeypatch.setattr(precision_module, "cpu_bf16_features", lambda: frozenset({"avx512_bf16"}))
    root = tmp_path / "run"
    options = TrainOptions(mode="uhn", device="cpu", progress=io.StringIO())
    start_run(tiny_plan(task_type, epochs=1, init_steps=0), root, options)
    for record in ("run.json", "summary.json"):
        written = json.loads((root / record).read_text())
        assert written["precision"] == expected
        assert written["precision_reason"].startswith(said)


def _gradients(generator: UHNGenerator, generate, probe: torch.Tensor, bf16: bool) -> torch.Tensor:  # type: ignore[no-untyped-def]
    generator.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        weights = generate()
    (weights.float() * probe).sum().backward()
    return torch.cat([p.grad.flatten() for p in generator.parameters() if p.grad is not None])


def _relative(reference: torch.Tensor, other: torch.Tensor) -> float:
    return float((other.float() - reference).norm() / reference.norm())


def test_bf16_generation_stays_close_to_fp32_generation() -> None:
    data = tiny_spec_data()
    data["generator"] = {}  # the paper's generator sizes: the depth bf16 rounding goes through
    plan = compile_spec(ExperimentSpec.model_validate(data))
    target = DeviceTarget(plan.trained_target, CPU)
    generator = UHNGenerator(plan.generator, plan.index_ranges, plan.structure_ranges, seed=0)
    with torch.no_grad():
        fp32 = target.generate(generator)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = target.generate(generator)
    assert bf16.dtype == torch.float32  # handed to the target in fp32
    assert not torch.equal(bf16, fp32)  # the matmuls really ran in bf16
    # Measured 0.005 (bf16 keeps 8 significant bits, ~0.4% a rounding); 4x margin.
    assert _relative(fp32, bf16) < 0.02
    assert float((bf16 - fp32).abs().max()) < 0.02 * float(fp32.abs().max())

    # The gradients: a random probe sums the weights with both signs, so bf16 rounding shows
    # more here (~10%, the naive generator under the same autocast shows the same); the fast
    # path may not add to it.
    probe = torch.randn(fp32.shape, generator=torch.Generator().manual_seed(1))
    rows = target.index_rows()

    def ours():  # type: ignore[no-untyped-def]
        return target.generate(generator)

    def naive():  # type: ignore[no-untyped-def]
        return naive_generate(generator, rows, target.structure_rows)

    ours_deviation = _relative(_gradients(generator, ours, probe, False), _gradients(generator, ours, probe, True))
    naive_deviation = _relative(_gradients(generator, naive, probe, False), _gradients(generator, naive, probe, True))
    assert ours_deviation < 0.25
    assert ours_deviation < 1.5 * naive_deviation


def test_train_precision_option_is_recorded_with_the_run(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec_data(epochs=1, init_steps=0)))
    result = CliRunner().invoke(app, ["train", str(spec), "--out", str(tmp_path / "run"), "--precision", "bf16"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["precision"] == "bf16"
    assert summary["precision_reason"].startswith("bf16")
    run_info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert "train.precision=bf16" in run_info["overrides"]
    assert "precision: bf16" in result.output  # the terminal line


def test_export_and_evaluate_generate_in_the_precision_the_run_trained_in(monkeypatch, tmp_path: Path) -> None:
    # Trained where auto means bf16, exported and evaluated where it means fp32: the weights are
    # generated as in training, so the figures the run reported are the ones evaluate reproduces.
    monkeypatch.setattr(precision_module, "cpu_bf16_features", lambda: frozenset({"amx_bf16"}))
    root = tmp_path / "run"
    start_run(tiny_plan(epochs=1, init_steps=0), root, TrainOptions(mode="uhn", device="cpu", progress=io.StringIO()))
    assert json.loads((root / "run.json").read_text())["precision"] == "bf16"
    monkeypatch.setattr(precision_module, "cpu_bf16_features", lambda: frozenset())
    _, _, precision = load_trained_source(RunDir.open(root), "uhn", CPU)
    assert precision.name == "bf16" and "amx_bf16" in precision.reason
    export = CliRunner().invoke(app, ["export", str(root), "-o", str(tmp_path / "m.safetensors")])
    assert export.exit_code == 0, export.output
    with safe_open(tmp_path / "m.safetensors", "pt") as handle:
        assert handle.metadata()["precision"] == "bf16"
    result = CliRunner().invoke(app, ["evaluate", str(root)])
    assert result.exit_code == 0, result.output
    printed = float(result.output.split("uhn: test accuracy ")[1].split()[0])
    assert printed == pytest.approx(json.loads((root / "summary.json").read_text())["uhn"], abs=5e-5)


def test_a_run_that_did_not_record_its_precision_resolves_auto_where_it_is_read(monkeypatch, tmp_path: Path) -> None:
    root = tmp_path / "run"
    start_run(tiny_plan(epochs=1, init_steps=0), root, TrainOptions(mode="uhn", device="cpu", progress=io.StringIO()))
    info = json.loads((root / "run.json").read_text())
    for field in ("precision", "precision_reason"):  # as uhn wrote run.json before recording it
        info.pop(field)
    (root / "run.json").write_text(json.dumps(info))
    (root / "summary.json").unlink()  # nor its summary (a run stopped before its end)
    monkeypatch.setattr(precision_module, "cpu_bf16_features", lambda: frozenset({"amx_bf16"}))
    assert RunDir.open(root).precision("auto", CPU).name == "bf16"
    monkeypatch.setattr(precision_module, "cpu_bf16_features", lambda: frozenset())
    assert RunDir.open(root).precision("auto", CPU).name == "fp32"
    assert RunDir.open(root).precision("bf16", CPU).name == "bf16"  # an explicit choice is the spec's
    (root / "run.json").write_text(json.dumps({**info, "precision": "bf17", "precision_reason": "typo"}))
    with pytest.raises(RecordError, match=r"run.json: precision: 'bf17' is not one of fp32, bf16, fp16"):
        RunDir.open(root).precision("auto", CPU)


def test_a_run_whose_run_json_lacks_the_precision_uses_the_one_its_summary_records(monkeypatch, tmp_path: Path) -> None:
    # Runs from before run.json recorded it wrote it to summary.json; auto meant fp32 on this
    # CPU then and bf16 now, and evaluating such a run in bf16 changed its figure (kv KAN:
    # 0.0112 trained and reported, 0.0154 re-evaluated).
    root = tmp_path / "run"
    monkeypatch.setattr(precision_module, "cpu_bf16_features", lambda: frozenset())  # auto: fp32 when it trained
    start_run(tiny_plan(epochs=1, init_steps=0), root, TrainOptions(mode="uhn", device="cpu", progress=io.StringIO()))
    info = json.loads((root / "run.json").read_text())
    assert json.loads((root / "summary.json").read_text())["precision"] == "fp32"
    for field in ("precision", "precision_reason"):
        info.pop(field)
    (root / "run.json").write_text(json.dumps(info))
    monkeypatch.setattr(precision_module, "cpu_bf16_features", lambda: frozenset({"amx_bf16"}))
    assert RunDir.open(root).precision("auto", CPU).name == "fp32"
    summary = json.loads((root / "summary.json").read_text())
    (root / "summary.json").write_text(json.dumps({**summary, "precision": "bf17"}))
    with pytest.raises(RecordError, match=r"summary.json: precision: 'bf17' is not one of fp32, bf16, fp16"):
        RunDir.open(root).precision("auto", CPU)


def test_resume_refuses_a_new_precision(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "--resume", str(tmp_path), "--precision", "bf16"])
    assert result.exit_code == 2
    assert "--precision" in result.output


def test_bench_reports_bf16_generation_against_both_peaks_of_the_same_run(monkeypatch) -> None:
    # The report's arithmetic on small products (a 64^3 peak): bench's own 4096^3 bf16 product
    # took over 30 minutes on a CPU without bf16 instructions, which emulates bf16 matmuls.
    monkeypatch.setattr(flops, "cpu_bf16_features", lambda: frozenset())  # the parent's check: emulated here
    plan = compile_spec(ExperimentSpec.model_validate(tiny_spec_data()))
    notices: list[str] = []
    report = run_bench(
        plan, BenchOptions(repeats=1, batch=8, precision="bf16", naive=False, square=64), notice=notices.append
    )
    assert report["precision"] == "bf16" and report["precision_requested"] == "bf16"
    matmul, generate = report["matmul"], report["generate"]
    assert matmul["dtype"] == "bfloat16" and matmul["square"] == 64
    useful = useful_flops_per_weight(plan.generator) * report["num_params"] / generate["seconds"]
    assert generate["matmul_fraction"] == pytest.approx(useful / matmul["square_flops_per_s"])
    assert generate["matmul_fraction_of_fp32_peak"] == pytest.approx(useful / matmul["fp32_square_flops_per_s"])
    text = render_report(report)
    assert "fp32" in text and "(64^3)" in text  # the fp32 peak is shown beside bf16's, at the size measured
    (line,) = notices  # said once, before measuring
    assert line.startswith("bf16 is emulated on this CPU") and "64^3 product" in line


def test_bench_measures_the_peak_on_a_smaller_product_where_bf16_is_emulated(monkeypatch) -> None:
    monkeypatch.setattr(flops, "cpu_bf16_features", lambda: frozenset())
    assert flops.peak_square(BenchOptions(precision="bf16")) == flops.EMULATED_BF16_SQUARE < flops.SQUARE
    assert flops.peak_square(BenchOptions(precision="fp32")) == flops.SQUARE
    assert flops.peak_square(BenchOptions(precision="auto")) == flops.SQUARE  # auto: fp32 on such a CPU
    assert flops.peak_square(BenchOptions(precision="bf16", square=512)) == 512  # as asked
    monkeypatch.setattr(flops, "cpu_bf16_features", lambda: frozenset({"avx512_bf16"}))
    assert flops.peak_square(BenchOptions(precision="bf16")) == flops.SQUARE
    assert not flops.bf16_emulated(BenchOptions(precision="bf16"))


def test_the_emulated_bf16_notice_says_how_long_the_bench_takes() -> None:
    spec = GeneratorSpec()  # the paper's generator: m = 2048, d = 128
    options = BenchOptions(repeats=5, precision="bf16", square=1024)
    line = flops.emulated_bf16_notice(spec, 270_000, options, 0.2e9)  # an AVX2 core's emulated bf16 rate
    # peak: 6 x 2 x (1024^3 + 1024 x 4096 x 1024) FLOPs at 0.2 GFLOP/s = 322 s; a generation
    # 270,000 x 2 x (2*2048*128 + 2*2*128*128 + 128) = 3.2e11 FLOPs: 26.5 min.
    assert (
        "1024^3 product (about 5.4 min)" in line
        and "at least 26.5 min" in line
        and "runs 18 (12 in train steps" in line
    )
    assert "\n" not in line


@pytest.mark.parametrize(
    ("cap", "hidden"),
    [("AVX2", {"avx512_bf16", "amx_bf16"}), ("avx512_core_bf16", {"amx_bf16"}), ("", set()), ("bogus", set())],
)
def test_a_onednn_isa_cap_hides_the_bf16_instructions_it_excludes(monkeypatch, cap: str, hidden: set[str]) -> None:
    # ONEDNN_MAX_CPU_ISA=AVX2 makes torch emulate bf16 matmuls (~100x slower here): auto then
    # picks fp32, and bench says bf16 is emulated, as on a CPU without the instructions.
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert {f for f in ("avx512_bf16", "amx_bf16") if precision_module.hidden_by_onednn_cap(f)} == hidden
    assert not precision_module.cpu_bf16_features() & hidden


def test_precision_on_a_compiled_plan_says_how_to_change_it(tmp_path: Path) -> None:
    plan_path = tmp_path / "tiny.pt"
    compile_spec(ExperimentSpec.model_validate(tiny_spec_data())).save(plan_path)
    result = CliRunner().invoke(app, ["train", str(plan_path), "--out", str(tmp_path / "run"), "--precision", "bf16"])
    assert result.exit_code == 2
    assert "--precision" in result.output and "train.precision=bf16" in result.output
    assert not (tmp_path / "run").exists()


def test_a_run_that_auto_gave_bf16_before_the_task_rule_keeps_it(monkeypatch, tmp_path: Path) -> None:
    # A graph run started when auto meant bf16 on any bf16 CPU: resume, export and evaluate
    # keep the bf16 it trained in, though auto now gives graph tasks fp32.
    monkeypatch.setattr(precision_module, "cpu_bf16_features", lambda: frozenset({"avx512_bf16"}))
    root = tmp_path / "run"
    options = TrainOptions(mode="uhn", device="cpu", progress=io.StringIO())
    start_run(tiny_plan("graph_node_classification", epochs=1, init_steps=0), root, options)
    info = json.loads((root / "run.json").read_text())
    old_reason = "auto: the CPU has avx512_bf16: bf16 matmuls run 2-6x fp32's there"
    (root / "run.json").write_text(json.dumps({**info, "precision": "bf16", "precision_reason": old_reason}))
    kept = RunDir.open(root).precision("auto", CPU)
    assert (kept.name, kept.reason) == ("bf16", old_reason)
