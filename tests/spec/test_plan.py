"""Plan files: round trip, safe loading, clear errors for damaged files, shared ranges."""

from __future__ import annotations

import hashlib
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from uhn_spec import PlanError, compile_spec, compile_specs, load_plan, spec_from_text
from uhn_spec.compiler import target_ranges
from uhn_spec.descriptors import INDEX_FIELDS, LOCAL_FIELDS, STRUCTURE_FIELDS, Ranges
from uhn_spec.plan import PLAN_VERSION, Plan

MLP = """\
name: plan_mlp
family: mlp
task:
  dataset: digits
layers:
  - kind: linear
    in_features: 64
    out_features: 32
    input_pooling: reshape_to_2d
  - kind: linear
    in_features: 32
    out_features: 10
    activation: silu
"""

WIDE_MLP = MLP.replace("plan_mlp", "plan_wide_mlp").replace("32", "48")


@pytest.fixture
def plan() -> Plan:
    return compile_spec(spec_from_text(MLP), source_text=MLP)


@pytest.fixture
def plan_file(plan: Plan, tmp_path: Path) -> Path:
    path = tmp_path / "plan.pt"
    plan.save(path)
    return path


def assert_same_plan(a: Plan, b: Plan) -> None:
    assert a.version == b.version
    assert a.source_text == b.source_text and a.source_hash == b.source_hash
    assert a.generator == b.generator
    for ranges_a, ranges_b in ((a.index_ranges, b.index_ranges), (a.structure_ranges, b.structure_ranges)):
        assert torch.equal(ranges_a.lo, ranges_b.lo) and torch.equal(ranges_a.hi, ranges_b.hi)
    assert [t.name for t in a.targets] == [t.name for t in b.targets]
    for ta, tb in zip(a.targets, b.targets):
        assert ta.spec == tb.spec
        assert ta.params == tb.params
        tensors = {
            **ta.index.to_dict(),
            "global_row": ta.global_row,
            "task_row": ta.task_row,
            "local_rows": ta.local_rows,
        }
        others = {
            **tb.index.to_dict(),
            "global_row": tb.global_row,
            "task_row": tb.task_row,
            "local_rows": tb.local_rows,
        }
        for field, x in tensors.items():
            y = others[field]
            assert x.dtype == y.dtype and torch.equal(x, y), field


def test_round_trip(plan: Plan, plan_file: Path) -> None:
    assert_same_plan(plan, load_plan(plan_file))


def test_plan_file_is_plain_data_with_one_index_descriptor_per_tensor(plan_file: Path) -> None:
    raw = torch.load(plan_file, map_location="cpu", weights_only=True)
    assert raw["format"] == "uhn-plan" and raw["version"] == PLAN_VERSION == 2
    target = raw["targets"][0]
    num_tensors = len(target["params"]["name"])
    assert "index_rows" not in target
    assert target["index"]["constants"].shape == (num_tensors, len(INDEX_FIELDS))
    assert target["index"]["dim_sizes"].prod(dim=1).tolist() == target["params"]["numel"].tolist()


def test_plan_size_grows_with_tensors_not_weights() -> None:
    narrow = compile_spec(spec_from_text(MLP)).targets[0].index
    wide = compile_spec(spec_from_text(MLP.replace("32", "3000"))).targets[0].index
    assert wide.num_rows > 50 * narrow.num_rows
    for x, y in zip(narrow.to_dict().values(), wide.to_dict().values()):
        assert x.shape == y.shape


def test_a_version_1_plan_asks_to_be_recompiled(plan_file: Path) -> None:
    raw = torch.load(plan_file, weights_only=True)
    raw["version"] = 1
    torch.save(raw, plan_file)
    assert_one_line_plan_error(
        plan_file, "plan format version 1, this uhn reads version 2", "recompile it with `uhn compile SPEC -o"
    )


def test_index_descriptors_that_do_not_match_the_parameter_table(plan_file: Path) -> None:
    raw = torch.load(plan_file, weights_only=True)
    raw["targets"][0]["index"]["dim_sizes"][0, 0] += 1
    torch.save(raw, plan_file)
    assert_one_line_plan_error(plan_file, "malformed", "index descriptors do not match its parameter table")


def test_save_leaves_no_temporary_files(plan_file: Path) -> None:
    assert [p.name for p in plan_file.parent.iterdir()] == ["plan.pt"]


def test_plan_records_its_spec_text_and_hash(plan: Plan) -> None:
    assert plan.source_text == MLP
    assert plan.source_hash == hashlib.sha256(MLP.encode()).hexdigest()


def test_default_source_is_the_resolved_spec() -> None:
    spec = spec_from_text(MLP)
    again = compile_spec(spec)
    assert spec_from_text(again.source_text) == spec


def assert_one_line_plan_error(path: Path, *fragments: str) -> None:
    with pytest.raises(PlanError) as caught:
        load_plan(path)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in (str(path), *fragments):
        assert fragment in message, message


def test_truncated_file(plan_file: Path) -> None:
    data = plan_file.read_bytes()
    plan_file.write_bytes(data[: len(data) // 2])
    assert_one_line_plan_error(plan_file, "not a readable uhn plan (corrupt or truncated?)")


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "random.pt"
    path.write_bytes(random.Random(0).randbytes(4096))
    assert_one_line_plan_error(path, "uhn plan")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    assert_one_line_plan_error(path, "uhn plan")


def test_other_format_version(plan_file: Path) -> None:
    raw = torch.load(plan_file, weights_only=True)
    raw["version"] = PLAN_VERSION + 1
    torch.save(raw, plan_file)
    assert_one_line_plan_error(
        plan_file,
        f"plan format version {PLAN_VERSION + 1}, this uhn reads version {PLAN_VERSION}",
        "recompile it with `uhn compile SPEC -o",
    )


def test_a_torch_file_that_is_not_a_plan(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    assert_one_line_plan_error(path, "no 'uhn-plan' header")


def test_missing_field(plan_file: Path) -> None:
    raw = torch.load(plan_file, weights_only=True)
    del raw["targets"][0]["local_rows"]
    torch.save(raw, plan_file)
    assert_one_line_plan_error(plan_file, "missing or has malformed field", "local_rows")


def test_missing_file(tmp_path: Path) -> None:
    assert_one_line_plan_error(tmp_path / "nope.pt", "plan file not found")


def test_the_plan_states_its_mode_and_an_old_plan_derives_it(plan: Plan, plan_file: Path, tmp_path: Path) -> None:
    assert load_plan(plan_file).mode == plan.mode == "single"
    both = compile_specs([spec_from_text(MLP), spec_from_text(WIDE_MLP)])
    assert both.mode == "family"
    raw = torch.load(plan_file, weights_only=True)
    del raw["mode"], raw["checksum"]  # as written before plans stated their mode
    torch.save(raw, plan_file)
    assert load_plan(plan_file).mode == "single"
    raw["mode"] = "multitask"  # no target carries a probability
    torch.save(raw, plan_file)
    assert_one_line_plan_error(plan_file, "malformed field mode", "'multitask'")


# --------------------------------------------------------------------------- multi-target


def test_multi_target_plan_shares_union_ranges(tmp_path: Path) -> None:
    narrow, wide = spec_from_text(MLP), spec_from_text(WIDE_MLP)
    plan = compile_specs([narrow, wide])
    singles = [compile_spec(s) for s in (narrow, wide)]
    index = singles[0].index_ranges.union(singles[1].index_ranges)
    structure = singles[0].structure_ranges.union(singles[1].structure_ranges)
    assert torch.equal(plan.index_ranges.lo, index.lo) and torch.equal(plan.index_ranges.hi, index.hi)
    assert torch.equal(plan.structure_ranges.lo, structure.lo)
    assert torch.equal(plan.structure_ranges.hi, structure.hi)
    # The union really is wider than the narrow target's own range.
    output_size = len(STRUCTURE_FIELDS) - len(LOCAL_FIELDS) + LOCAL_FIELDS.index("output_size")
    assert plan.structure_ranges.hi[output_size] == 48 > singles[0].structure_ranges.hi[output_size]

    path = tmp_path / "multi.pt"
    plan.save(path)
    loaded = load_plan(path)
    assert_same_plan(plan, loaded)
    assert loaded.target("plan_wide_mlp").num_params == wide.num_params
    with pytest.raises(PlanError, match="plan has no target 'other'; it has: plan_mlp, plan_wide_mlp"):
        loaded.target("other")


def test_categorical_domains_widen_ranges() -> None:
    """A silu layer alone would give activation_type the range [3, 3]; the layer kind's full
    domain [0, 3] keeps every activation in range for unseen architectures."""
    plan = compile_spec(spec_from_text(MLP))
    _, structure = target_ranges(plan.targets[0])
    column = len(STRUCTURE_FIELDS) - len(LOCAL_FIELDS) + LOCAL_FIELDS.index("activation_type")
    assert (structure.lo[column], structure.hi[column]) == (0.0, 3.0)


# --------------------------------------------------------------------------- normalisation


def test_in_range_values_map_into_plus_minus_sqrt3() -> None:
    ranges = Ranges(torch.tensor([0.0, -4.0], dtype=torch.float64), torch.tensor([10.0, 4.0], dtype=torch.float64))
    out = ranges.normalise(torch.tensor([[0.0, -4.0], [10.0, 4.0], [5.0, 0.0]]))
    root3 = math.sqrt(3)
    assert torch.allclose(out, torch.tensor([[-root3, -root3], [root3, root3], [0.0, 0.0]]))


def test_off_range_values_extrapolate_linearly() -> None:
    ranges = Ranges(torch.tensor([0.0], dtype=torch.float64), torch.tensor([10.0], dtype=torch.float64))
    out = ranges.normalise(torch.tensor([[20.0], [30.0]]))[:, 0]
    # No clamping: each further range width (10) adds sqrt(12), the in-range span.
    assert out[0] == pytest.approx(15 * math.sqrt(12) / 10)
    assert out[1] - out[0] == pytest.approx(math.sqrt(12))


def test_degenerate_range_does_not_amplify_off_range_values() -> None:
    """The authors divide by sqrt(1e-5) when lo == hi: a value 1 off lands at ~316."""
    ranges = Ranges(torch.tensor([5.0], dtype=torch.float64), torch.tensor([5.0], dtype=torch.float64))
    out = ranges.normalise(torch.tensor([[5.0], [6.0], [4.0]]))[:, 0]
    assert out[0] == 0.0
    assert out[1] == pytest.approx(math.sqrt(12)) and out[2] == pytest.approx(-math.sqrt(12))


# --------------------------------------------------------------------------- index rows

CNN = """\
name: plan_cnn
family: cnn
cnn_stage_num: 1
task: {dataset: digits}
layers:
  - {kind: conv2d, in_channels: 1, out_channels: 4, kernel_size: 3}
  - {kind: linear, in_features: 4, out_features: 10, input_pooling: avg_pooling, bias: false}
"""

GAT = """\
name: plan_gat
family: gat
task:
  dataset: synthetic
  synthetic: {task_type: graph_node_classification, input_dims: [6], num_outputs: 3}
layers:
  - {kind: gat, in_features: 6, out_features: 2, heads: 3}
  - {kind: gat, in_features: 6, out_features: 3, heads: 2, concat: false}
"""


def expected_index_rows(entry, layer_type: int) -> list[list[int]]:
    """Per scalar, the slow way: unravel the flat position into coordinates, then ravel the
    coordinates of the dimensions that share an index field into that field."""
    rows = []
    for flat in range(entry.numel):
        coords = np.unravel_index(flat, entry.shape)
        row = [-1] * len(INDEX_FIELDS)
        row[:3] = [entry.layer, layer_type, entry.param_type]
        for field in dict.fromkeys(entry.index_fields):
            dims = [d for d, f in enumerate(entry.index_fields) if f == field]
            row[INDEX_FIELDS.index(field)] = int(
                np.ravel_multi_index([coords[d] for d in dims], [entry.shape[d] for d in dims])
            )
        rows.append(row)
    return rows


@pytest.mark.parametrize("text", [MLP, CNN, GAT], ids=["mlp", "cnn", "gat"])
def test_index_rows_describe_each_scalar_in_c_order(text: str) -> None:
    spec = spec_from_text(text)
    target = compile_spec(spec).targets[0]
    rows = target.index_rows()
    assert rows.dtype == torch.int16
    for t, entry in enumerate(target.params):
        layer_type = int(spec.layers[entry.layer].layer_type)
        got = rows[entry.offset : entry.offset + entry.numel].tolist()
        assert target.index.tensor_rows(t).tolist() == got
        assert got == expected_index_rows(entry, layer_type), entry.name


def test_index_rows_widen_to_int32_when_a_size_exceeds_int16() -> None:
    wide = """\
name: plan_wide_input
family: mlp
task:
  dataset: synthetic
  synthetic: {task_type: formula_regression, input_dims: [40000], num_outputs: 1}
layers:
  - {kind: linear, in_features: 40000, out_features: 1, bias: false}
"""
    rows = compile_spec(spec_from_text(wide)).targets[0].index_rows()
    assert rows.dtype == torch.int32
    assert rows[:, INDEX_FIELDS.index("input_idx")].tolist() == list(range(40000))
