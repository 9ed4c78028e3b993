"""Training, evaluating and exporting a family plan: one UHN for many architectures, the
architecture draws, resume equality, the seen/unseen summary, and zero-shot export."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from tests.conftest import KillAfter, RecordSteps, RunInterrupted
from uhn_cli.main import app
from uhn_runtime.model.target import TargetCache
from uhn_runtime.train.checkpoint import load_checkpoint
from uhn_runtime.train.draws import architecture_draw
from uhn_runtime.train.run import TIMING_FIELDS, TrainOptions, resume_run, start_run
from uhn_runtime.train.run_dir import RunDir
from uhn_runtime.train.run_tables import evaluated_targets
from uhn_spec import Plan, load_plan
from uhn_spec.errors import UHNError
from uhn_spec.modes.family import compile_family, load_family

# Six MLPs on synthetic data (width x activation, dropout so the RNG state matters); the
# last two are unseen, and `each: 2` seen ones are evaluated beside them.
TEMPLATE = """\
family: mlp
task:
  dataset: synthetic
  synthetic: {task_type: image_classification, input_dims: [1, 4, 4], num_outputs: 3, num_examples: 256}
layers:
  - {kind: linear, in_features: 16, out_features: {{ width }}, input_pooling: reshape_to_2d, dropout: 0.2}
  - {kind: linear, in_features: {{ width }}, out_features: 3, activation: {{ act }}}
generator: {index_freqs: 16, hidden: 16, blocks: 1}
train: {epochs: 3, warmup: 1, lr: 3.0e-3, init_steps: 4, init_lr: 1.0e-3, batch_size: 64, seed: 3}
"""


def family_file(tmp_path: Path, **changes: Any) -> Path:
    data: dict[str, Any] = {
        "name": "tiny",
        "count": 6,
        "unseen": 2,
        "each": 2,
        "seed": 3,
        "sample": {"width": {"min": 4, "max": 12, "step": 2}, "act": {"choice": ["elu", "silu"]}},
        "template": TEMPLATE,
    }
    data.update(changes)
    path = tmp_path / "tiny_family.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def family_plan(tmp_path: Path, overrides: tuple[str, ...] = (), **changes: Any) -> Plan:
    return compile_family(load_family(family_file(tmp_path, **changes), overrides))


def options(**kw: Any) -> TrainOptions:
    kw.setdefault("progress", io.StringIO())
    kw.setdefault("checkpoint_seconds", 0.0)
    return TrainOptions(mode="uhn", device="cpu", **kw)


def final_source(run_root: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(run_root / "checkpoints" / "uhn.pt")
    assert state["finished"]
    return state["source"]


def logged(run_root: Path) -> list[tuple]:
    records = [json.loads(line) for line in (run_root / "metrics.jsonl").read_text().splitlines()]
    return [tuple((k, v) for k, v in r.items() if k not in TIMING_FIELDS) for r in records if r["event"] != "resume"]


# --------------------------------------------------------------------------- draws


def test_architecture_draws_are_a_pure_function_of_seed_and_step() -> None:
    draws = [architecture_draw(5, step, 40) for step in range(400)]
    assert draws == [architecture_draw(5, step, 40) for step in range(400)]  # no state anywhere
    torch.manual_seed(123)
    assert draws == [architecture_draw(5, step, 40) for step in range(400)]
    assert draws != [architecture_draw(6, step, 40) for step in range(400)]
    assert draws != [architecture_draw(5, step, 40, stream="init") for step in range(400)]
    assert {d[0] for d in draws} == set(range(40))  # every seen architecture gets trained
    assert architecture_draw(5, 7, 1) == [0]


def test_each_rank_draws_its_own_architecture_and_rank_0_what_one_process_draws() -> None:
    """Under torchrun N ranks train N architectures per step, reproducibly (issue #14)."""
    single = [architecture_draw(5, step, 40) for step in range(200)]
    assert [architecture_draw(5, step, 40, rank=0) for step in range(200)] == single
    rank1 = [architecture_draw(5, step, 40, rank=1) for step in range(200)]
    assert rank1 == [architecture_draw(5, step, 40, rank=1) for step in range(200)]
    assert sum(a != b for a, b in zip(single, rank1)) > 150  # mostly different architectures


def test_models_per_step_draws_distinct_architectures() -> None:
    for step in range(200):
        picked = architecture_draw(1, step, 6, k=3)
        assert len(picked) == 3 and len(set(picked)) == 3 and all(0 <= i < 6 for i in picked)
    assert sorted(architecture_draw(1, 0, 4, k=9)) == [0, 1, 2, 3]  # k capped at the seen count


def test_target_cache_is_bounded_and_leaves_the_global_rng_alone(tmp_path: Path) -> None:
    plan = family_plan(tmp_path)
    cache = TargetCache(plan, torch.device("cpu"), capacity=2)
    state = torch.get_rng_state()
    first = cache[0]
    assert cache[0] is first and cache.misses == 1
    cache[1], cache[2]  # noqa: B018 (evicts target 0, the least recently used)
    assert cache[0] is not first and cache.misses == 4
    assert torch.equal(torch.get_rng_state(), state)


# --------------------------------------------------------------------------- training


def test_family_run_reports_seen_and_unseen(tmp_path: Path) -> None:
    plan = family_plan(tmp_path)
    shown = io.StringIO()
    summary = start_run(plan, tmp_path / "run", options(progress=shown))
    assert summary["seen"]["models"] == 2 and summary["unseen"]["models"] == 2
    for group in ("seen", "unseen"):
        assert 0.0 <= summary[group]["mean"] <= 1.0 and summary[group]["std"] >= 0.0
    assert summary["uhn"] == summary["seen"]["mean"] and summary["num_models"] == 6
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == summary
    with open(tmp_path / "run" / summary["models_file"]) as handle:
        rows = list(csv.DictReader(handle))
    names = [t.name for t in plan.targets]
    assert [r["name"] for r in rows] == names[:2] + names[4:]
    assert [r["split"] for r in rows] == ["seen", "seen", "unseen", "unseen"]
    unseen = [float(r["test_accuracy"]) for r in rows[2:]]
    assert summary["unseen"]["mean"] == pytest.approx(sum(unseen) / 2, abs=1e-6)
    assert "unseen: mean" in shown.getvalue() and names[5] in shown.getvalue()  # the table is printed


def test_family_training_visits_the_seen_architectures_only(tmp_path: Path) -> None:
    plan = family_plan(tmp_path, overrides=("train.models_per_step=2",))
    steps = RecordSteps()
    start_run(plan, tmp_path / "run", options(observers=(steps,)))
    trained = [list(e.targets) for e in steps.events]
    seen = {t.name for t in plan.targets if t.split == "seen"}
    assert all(len(names) == 2 and set(names) <= seen for names in trained)
    assert set().union(*trained) == seen


def test_resumed_family_run_ends_with_the_weights_of_an_uninterrupted_run(tmp_path: Path) -> None:
    plan = family_plan(tmp_path)
    start_run(plan, tmp_path / "whole", options())
    with pytest.raises(RunInterrupted):
        start_run(plan, tmp_path / "killed", options(observers=(KillAfter(2),)))
    summary = resume_run(tmp_path / "killed", options())
    whole, resumed = final_source(tmp_path / "whole"), final_source(tmp_path / "killed")
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)
    assert summary["seen"] == json.loads((tmp_path / "whole" / "summary.json").read_text())["seen"]
    assert logged(tmp_path / "killed") == logged(tmp_path / "whole")


def test_a_family_refuses_the_direct_baseline(tmp_path: Path) -> None:
    with pytest.raises(UHNError, match="--model NAME --mode both"):
        start_run(family_plan(tmp_path), tmp_path / "run", TrainOptions(mode="both", device="cpu"))


def test_targets_of_one_run_share_their_training(tmp_path: Path) -> None:
    plan = family_plan(tmp_path)
    other = plan.targets[1]
    other.spec = other.spec.model_copy(update={"train": other.spec.train.model_copy(update={"lr": 0.5})})
    with pytest.raises(UHNError, match=f"target {other.name}: its train section differs"):
        start_run(plan, tmp_path / "run", options())


# --------------------------------------------------------------------------- export and evaluate


@pytest.fixture(scope="module")
def family_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny family run (module-scoped: the export tests share it)."""
    root = tmp_path_factory.mktemp("family")
    start_run(family_plan(root), root / "run", options())
    return root / "run"


def member_spec(width: int, act: str, name: str = "new_member") -> str:
    text = TEMPLATE.replace("{{ width }}", str(width)).replace("{{ act }}", act)
    return f"name: {name}\n{text}"


def test_export_model_writes_one_member_that_evaluate_reads(family_run: Path, tmp_path: Path) -> None:
    names = [t.name for t in RunDir.open(family_run).plan().targets]
    unseen = names[-1]
    out = tmp_path / "member.safetensors"
    result = CliRunner().invoke(app, ["export", str(family_run), "--model", unseen, "-o", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert unseen in result.output
    with open(family_run / "models.csv") as handle:
        reported = {row["name"]: float(row["test_accuracy"]) for row in csv.DictReader(handle)}
    evaluated = CliRunner().invoke(app, ["evaluate", str(out), "--device", "cpu"])
    assert evaluated.exit_code == 0, evaluated.output
    assert float(evaluated.output.split()[-1]) == pytest.approx(reported[unseen], abs=1e-4)  # the run's own number


def test_evaluate_a_family_run_prints_every_evaluated_member(family_run: Path) -> None:
    result = CliRunner().invoke(app, ["evaluate", str(family_run), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    summary = json.loads((family_run / "summary.json").read_text())
    assert f"unseen: mean {summary['unseen']['mean']:.4f}" in result.output
    assert f"seen: mean {summary['seen']['mean']:.4f}" in result.output


def test_zero_shot_export_of_a_new_architecture_in_range(family_run: Path, tmp_path: Path) -> None:
    plan = RunDir.open(family_run).plan()
    known = {(t.spec.layers[0].out_features, t.spec.layers[1].activation.type) for t in plan.targets}
    width, act = next((w, a) for w in (4, 6, 8, 10, 12) for a in ("elu", "silu") if (w, a) not in known)
    spec = tmp_path / "new.yaml"
    spec.write_text(member_spec(width, act))
    out = tmp_path / "new.safetensors"
    result = CliRunner().invoke(
        app, ["export", str(family_run), "--spec", str(spec), "-o", str(out), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    assert "zero-shot" in result.output and "warning" not in result.output
    evaluated = CliRunner().invoke(app, ["evaluate", str(out), "--device", "cpu"])
    assert evaluated.exit_code == 0, evaluated.output
    assert 0.0 <= float(evaluated.output.split()[-1]) <= 1.0


def test_zero_shot_export_out_of_range_warns_naming_the_fields(family_run: Path, tmp_path: Path) -> None:
    spec = tmp_path / "wide.yaml"
    spec.write_text(member_spec(40, "silu", name="wide"))  # widths 4..12 in the family
    out = tmp_path / "wide.safetensors"
    result = CliRunner().invoke(
        app, ["export", str(family_run), "--spec", str(spec), "-o", str(out), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    warning = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and str(spec) in warning[0]
    assert "index.output_idx 0..39 (family 0..11)" in warning[0], warning[0]
    assert "structure.output_size 3..40 (family " in warning[0], warning[0]
    assert out.is_file()


def test_export_refuses_model_and_spec_together(family_run: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["export", str(family_run), "--model", "x", "--spec", "y.yaml", "-o", str(tmp_path / "a.safetensors")]
    )
    assert result.exit_code == 2 and "give one" in result.output


def test_a_family_plan_keeps_how_many_seen_members_are_evaluated(tmp_path: Path) -> None:
    plan = family_plan(tmp_path, each=3)
    plan.save(tmp_path / "plan.pt")
    loaded = load_plan(tmp_path / "plan.pt")
    assert loaded.evaluated_seen == 3
    assert evaluated_targets(loaded) == [0, 1, 2, 4, 5]  # the first 3 seen, then every unseen
