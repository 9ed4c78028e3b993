"""Files uhn reads back (run records, plans, checkpoints, exports, tables, metrics): each is
checked before use, and whatever does not fit is one line naming the file and the field.

Covers the typed run record, plan tensors that claim more than the file holds (stride-0
views, archives that would inflate), plans that contradict their own tables or specs, the
memory guard on plans and exports, checksums over everything a file means (bit flips, edited
metadata; older files without the new checksum still load), and JSON/YAML nested too deeply.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from tests.conftest import one_error
from tests.tiny_specs import tiny_plan
from uhn_runtime.io.export import CONTENT_CHECKSUM_KEY, load_exported
from uhn_runtime.io.plot import read_metrics
from uhn_runtime.train.checkpoint import CheckpointError, load_checkpoint
from uhn_runtime.train.run_dir import RunDir
from uhn_runtime.train.run_record import RecordError
from uhn_spec import PlanError, SpecError, compile_spec, load_plan
from uhn_spec.received import CHECKSUM_KEY
from uhn_tools.reproduce import TableError, load_table

runner = CliRunner()
DEEP = 100_000  # nesting levels: past Python's recursion limit


def edit_json(path: Path, **fields: Any) -> None:
    record = json.loads(path.read_text())
    record.update(fields)
    path.write_text(json.dumps(record))


# --------------------------------------------------------------------------- run.json, summary.json


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("micro_shards", "abc", "micro_shards: 'abc' does not fit: input should be a valid integer"),
        ("micro_shards", -3, "micro_shards: -3 does not fit: input should be greater than or equal to 0"),
        ("micro_shards", 10**12, "micro_shards: 1000000000000 does not fit: input should be less than or equal to 40"),
        ("data_root", 12345, "data_root: 12345 does not fit: input should be a valid string"),
        ("device", "gpu", "device: 'gpu' is not one of auto, cpu, cuda"),
        ("world_size", 0, "world_size: 0 does not fit"),
        ("tensorboard", "yes", "tensorboard: 'yes' does not fit: input should be a valid boolean"),
        ("seed", 1.5, "seed: 1.5 does not fit"),
        ("exact", True, "exact: true disagrees with micro_shards: 0"),  # a resume would train other arithmetic
    ],
)
def test_each_run_json_field_is_checked(run_copy: Path, field: str, value: Any, expected: str) -> None:
    edit_json(run_copy / "run.json", **{field: value})
    for args in (["train", "--resume", str(run_copy)], ["evaluate", str(run_copy)]):
        assert f"{run_copy / 'run.json'}: {expected}" in one_error(args)


def test_the_run_json_uhn_writes_reads_back_whole(finished_run: Path) -> None:
    assert RunDir.open(finished_run).info() == json.loads((finished_run / "run.json").read_text())


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"uhn": "high"}, "uhn: 'high' does not fit: input should be a valid number"),
        ({"phase_seconds": {"uhn": "x"}}, "phase_seconds.uhn: 'x' does not fit"),
        ({"precision": "fp64"}, "precision: 'fp64' is not one of fp32, bf16, fp16"),
        ({"threads": -1}, "threads: -1 does not fit"),
    ],
)
def test_summary_json_fields_read_back_are_checked(run_copy: Path, fields: dict[str, Any], expected: str) -> None:
    edit_json(run_copy / "summary.json", **fields)
    with pytest.raises(RecordError) as caught:
        RunDir.open(run_copy).summary()
    assert f"{run_copy / 'summary.json'}: {expected}" in str(caught.value)


def test_a_deeply_nested_or_huge_run_json_is_one_line(run_copy: Path) -> None:
    (run_copy / "run.json").write_text("[" * DEEP + "]" * DEEP)
    assert f"{run_copy / 'run.json'}: not readable JSON: nested too deeply" in one_error(["evaluate", str(run_copy)])
    (run_copy / "run.json").write_text('{"mode": "uhn", "seed": 1, "pad": "' + "x" * (17 * 2**20) + '"}')
    assert "bytes, more than a uhn run record holds" in one_error(["evaluate", str(run_copy)])


def test_a_deeply_nested_metrics_line_is_one_line(run_copy: Path) -> None:
    metrics = run_copy / "metrics.jsonl"
    metrics.write_text("[" * DEEP + "]" * DEEP + "\n" + metrics.read_text())
    with pytest.raises(Exception) as caught:
        read_metrics(RunDir.open(run_copy))
    assert f"{metrics}: line 1: not a JSON record" in str(caught.value)


def test_a_metrics_record_of_other_types_is_named(run_copy: Path) -> None:
    metrics = run_copy / "metrics.jsonl"
    edited = '{"phase": "uhn", "event": "train", "epoch": 1, "loss": "low", "lr": 0.1}\n'
    metrics.write_text(edited + metrics.read_text())
    with pytest.raises(Exception, match=r"line 1: loss: 'low' is not a number"):
        read_metrics(RunDir.open(run_copy))


def test_a_deeply_nested_table_file_is_one_line(tmp_path: Path) -> None:
    table = tmp_path / "deep.yaml"
    table.write_text("[" * DEEP + "]" * DEEP)
    with pytest.raises(TableError, match="nested too deeply"):
        load_table(str(table))
    assert str(table) in one_error(["reproduce", str(table), "--out", str(tmp_path / "out")])


# --------------------------------------------------------------------------- plans


def rewrite_plan(path: Path, edit: Any) -> Path:  # edit(raw) changes the loaded dict in place
    raw = torch.load(path, weights_only=True)
    edit(raw)
    torch.save(raw, path)
    return path


@pytest.fixture
def plan_file(finished_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copyfile(finished_run / "plan.pt", tmp_path / "plan.pt"))


def plan_error(path: Path) -> str:
    with pytest.raises(PlanError) as caught:
        load_plan(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    return message


def test_a_stride_0_view_claiming_a_million_rows_is_refused(plan_file: Path) -> None:
    def inflate(raw: dict[str, Any]) -> None:
        target = raw["targets"][0]
        target["local_rows"] = target["local_rows"][:1].expand(10**6, -1)

    rewrite_plan(plan_file, inflate)
    message = plan_error(plan_file)
    assert "tensor targets[0].local_rows: shape [1000000, 21] claims more bytes than the file holds" in message
    assert "targets[0].local_rows" in one_error(["inspect", str(plan_file)])


def test_a_view_within_the_file_size_must_still_be_contiguous(plan_file: Path) -> None:
    def overlap(raw: dict[str, Any]) -> None:
        target = raw["targets"][0]
        target["local_rows"] = target["local_rows"][:1].expand(len(target["local_rows"]), -1)

    rewrite_plan(plan_file, overlap)
    assert "targets[0].local_rows: a view with strides [0, 1], not a contiguous tensor" in plan_error(plan_file)


def test_an_archive_that_would_inflate_is_refused(plan_file: Path, tmp_path: Path) -> None:
    rewrite_plan(plan_file, lambda raw: raw.update(padding=torch.zeros(2**22)))  # 16 MiB of zeros
    inflating = tmp_path / "inflating.pt"
    with zipfile.ZipFile(plan_file) as source, zipfile.ZipFile(inflating, "w", zipfile.ZIP_DEFLATED) as target:
        for entry in source.infolist():
            target.writestr(entry.filename, source.read(entry))
    assert inflating.stat().st_size < 2**20
    assert "is compressed; uhn writes a uhn plan uncompressed" in plan_error(inflating)


def test_params_that_do_not_tile_the_flat_vector_are_refused(plan_file: Path) -> None:
    rewrite_plan(plan_file, lambda raw: raw["targets"][0]["params"]["offset"].__setitem__(1, 3))
    assert "targets[0].params: tensor 1 (layers.0.bias): numel 12 at offset 3" in plan_error(plan_file)


def test_a_table_that_contradicts_the_spec_is_refused(plan_file: Path) -> None:
    rewrite_plan(plan_file, lambda raw: raw["targets"][0]["params"]["name"].__setitem__(0, "layers.0.other"))
    message = plan_error(plan_file)
    assert "targets[0].params: tensor 0 is layers.0.other [12, 16] where the target's spec has layers.0.weight" in (
        message
    )


def test_a_wrong_dtype_is_named(plan_file: Path) -> None:
    rewrite_plan(plan_file, lambda raw: raw["targets"][0]["index"].__setitem__("dim_sizes", torch.ones(4, 2)))
    message = plan_error(plan_file)
    assert "targets[0].index.dim_sizes: torch.float32 of shape [4, 2]; a plan holds torch.int64" in message


def test_a_plan_over_the_memory_guard_is_refused_at_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A small file (a plan is O(tensors)) whose spec asks for 12 * 6.4M bytes to compile.
    plan = tiny_plan()
    spec = plan.targets[0].spec
    wide = {"out_features": 400_000}, {"in_features": 400_000}
    layers = [layer.model_copy(update=update) for layer, update in zip(spec.layers, wide)]
    big = compile_spec(spec.model_copy(update={"layers": layers}))
    big.save(tmp_path / "big.pt")
    monkeypatch.setenv("UHN_MEMORY_LIMIT_GIB", "0.05")
    with pytest.raises(SpecError) as caught:
        load_plan(tmp_path / "big.pt")
    assert str(tmp_path / "big.pt") in str(caught.value) and "compile needs about" in str(caught.value)


def flip_a_bit_in_each_tensor(path: Path) -> list[Path]:
    """Copies of ``path``, each with the lowest bit of one tensor's first byte flipped."""
    with zipfile.ZipFile(path) as archive:
        entries = [e for e in archive.infolist() if "/data/" in e.filename and e.file_size > 0]
    data = path.read_bytes()
    copies = []
    for i, entry in enumerate(entries):
        header = entry.header_offset  # the local header: 30 bytes, then the name and the extra field
        name_length = int.from_bytes(data[header + 26 : header + 28], "little")
        extra_length = int.from_bytes(data[header + 28 : header + 30], "little")
        start = header + 30 + name_length + extra_length
        flipped = bytearray(data)
        flipped[start] ^= 1
        copy = path.with_name(f"flipped{i}{path.suffix}")
        copy.write_bytes(bytes(flipped))
        copies.append(copy)
    return copies


def test_a_bit_flip_in_any_plan_tensor_is_refused(plan_file: Path) -> None:
    messages = [plan_error(copy) for copy in flip_a_bit_in_each_tensor(plan_file)]
    assert len(messages) >= 10
    assert any("is corrupt or was edited: checksum mismatch" in m for m in messages)


def test_a_bit_flip_in_any_checkpoint_tensor_is_refused(finished_run: Path, tmp_path: Path) -> None:
    for kind in ("uhn", "direct"):
        source = Path(shutil.copyfile(finished_run / "checkpoints" / f"{kind}.pt", tmp_path / f"{kind}.pt"))
        for copy in flip_a_bit_in_each_tensor(source):
            with pytest.raises(CheckpointError, match=f"{copy} is corrupt or was edited: checksum mismatch"):
                load_checkpoint(copy)


def test_files_without_the_checksum_still_load(plan_file: Path, finished_run: Path, tmp_path: Path) -> None:
    rewrite_plan(plan_file, lambda raw: raw.pop(CHECKSUM_KEY))
    load_plan(plan_file)
    checkpoint = Path(shutil.copyfile(finished_run / "checkpoints" / "uhn.pt", tmp_path / "c.pt"))
    rewrite_plan(checkpoint, lambda raw: raw.pop(CHECKSUM_KEY))
    assert load_checkpoint(checkpoint)["kind"] == "uhn"


# --------------------------------------------------------------------------- exports


def rewrite_export(source: Path, target: Path, edit_metadata: Any) -> Path:
    with safe_open(str(source), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    edit_metadata(metadata)
    save_file(tensors, str(target), metadata=metadata)
    return target


def test_a_same_length_edit_of_the_exported_spec_is_refused(exported: Path, tmp_path: Path) -> None:
    def relu(metadata: dict[str, str]) -> None:
        assert '"silu"' in metadata["spec_json"]
        metadata["spec_json"] = metadata["spec_json"].replace('"silu"', '"relu"')

    edited = rewrite_export(exported, tmp_path / "edited.safetensors", relu)
    assert f"{edited} is corrupt or was edited: checksum mismatch" in one_error(["evaluate", str(edited)])


def test_an_export_from_before_the_content_checksum_still_loads(exported: Path, tmp_path: Path) -> None:
    older = rewrite_export(exported, tmp_path / "older.safetensors", lambda m: m.pop(CONTENT_CHECKSUM_KEY))
    spec, _ = load_exported(older)
    assert spec.name == "tiny_mlp"


def test_an_export_over_the_memory_guard_is_refused_before_it_is_built(
    exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def grow(metadata: dict[str, str]) -> None:
        spec = json.loads(metadata["spec_json"])
        spec["layers"][0]["out_features"] = 10_000
        spec["layers"][1]["in_features"] = 10_000
        metadata["spec_json"] = json.dumps(spec)

    grown = rewrite_export(exported, tmp_path / "grown.safetensors", grow)
    monkeypatch.setenv("UHN_MEMORY_LIMIT_GIB", "0.001")
    line = one_error(["evaluate", str(grown)])
    assert f"{grown}: metadata spec_json: layers[0]:" in line and "compile needs about" in line
