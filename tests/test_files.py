"""Verified files: what uhn writes respects the umask and is refused with one line when damaged.

Covers the atomic writer, checkpoints of the wrong phase, damaged run.json, exports with
flipped bytes, missing or misshapen tensors and a broken embedded spec, and the machine
facts and git revision recorded in run.json.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from uhn_cli.main import app
from uhn_runtime.export import export_run
from uhn_runtime.run_dir import RunDir, git_revision
from uhn_runtime.train import TrainOptions, start_run
from uhn_spec.files import atomic_write, atomic_write_text

from .conftest import REPO_ROOT
from .tiny_specs import tiny_plan

runner = CliRunner()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("files") / "run"
    start_run(tiny_plan(epochs=1, init_steps=1), root, TrainOptions(mode="both", device="cpu", progress=io.StringIO()))
    return root


@pytest.fixture
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


@pytest.fixture(scope="module")
def exported(finished_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("export") / "model.safetensors"
    export_run(RunDir.open(finished_run), path, "uhn", torch.device("cpu"))
    return path


def one_error(args: list[str]) -> str:
    """Run the CLI, expecting exit 2 with exactly one `error:` line and no traceback."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


# --------------------------------------------------------------------------- writing


def file_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_write_respects_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        path = atomic_write_text(tmp_path / "a" / "f.txt", "x")
    finally:
        os.umask(old)
    assert file_mode(path) == 0o666 & ~umask and path.read_text() == "x"


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = atomic_write_text(tmp_path / "f.txt", "old")

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_run_files_and_exports_are_readable_by_others(finished_run: Path, exported: Path) -> None:
    # Under the default umask (0022) every file uhn writes is 0644, as `touch` would make it.
    old = os.umask(0o022)
    os.umask(old)
    if old != 0o022:
        pytest.skip(f"the umask here is {old:o}, not the default 022")
    written = [p for p in finished_run.rglob("*") if p.is_file()] + [exported]
    assert {p.name: oct(file_mode(p)) for p in written} == {p.name: oct(0o644) for p in written}


# --------------------------------------------------------------------------- checkpoints and run.json


def test_resume_refuses_a_checkpoint_of_the_other_phase(run_copy: Path) -> None:
    checkpoints = run_copy / "checkpoints"
    shutil.copyfile(checkpoints / "direct.pt", checkpoints / "uhn.pt")
    line = one_error(["train", "--resume", str(run_copy)])
    assert f"{checkpoints / 'uhn.pt'}: kind:" in line and "'direct' checkpoint" in line
    assert "uhn.pt" in one_error(["export", str(run_copy), "-o", str(run_copy / "m.safetensors")])


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"mode": "uhn", "se', "not readable JSON"),
        ("[1, 2]", "holds a JSON list"),
        ("{}", "mode: missing"),
        ('{"mode": "fast", "seed": 1}', "mode: 'fast' is not one of uhn, direct, both"),
    ],
)
def test_a_damaged_run_json_is_named(run_copy: Path, content: str, expected: str) -> None:
    (run_copy / "run.json").write_text(content)
    line = one_error(["train", "--resume", str(run_copy)])
    assert f"{run_copy / 'run.json'}: {expected}" in line


def test_run_json_records_the_machine(finished_run: Path) -> None:
    info = json.loads((finished_run / "run.json").read_text())
    machine = info["machine"]
    assert machine["torch_threads"] == torch.get_num_threads() and machine["cpu"]
    assert set(machine["thread_env"]) == {k for k in os.environ if k.startswith(("OMP_", "KMP_", "GOMP_", "MKL_", "OPENBLAS_"))}
    assert info["versions"]["torch"] == torch.__version__ and info["world_size"] == 1


def test_git_revision_only_from_a_uhn_checkout(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("not running from a git checkout")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
    assert (git_revision(REPO_ROOT) or "").startswith(head)
    # An installed copy inside some other repository (a venv in a project) records none.
    other = tmp_path / "project"
    (other / "site-packages").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(other)], check=True)
    (other / "pyproject.toml").write_text('[project]\nname = "someone-else"\n')
    assert git_revision(other) is None and git_revision(other / "site-packages") is None


# --------------------------------------------------------------------------- exports


def rewrite_export(source: Path, target: Path, edit_tensors=None, edit_metadata=None) -> Path:  # type: ignore[no-untyped-def]
    with safe_open(str(source), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    if edit_tensors:
        edit_tensors(tensors)
    if edit_metadata:
        edit_metadata(metadata)
    save_file(tensors, str(target), metadata=metadata)
    return target


def test_flipped_bytes_in_an_export_are_refused(exported: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.safetensors"
    data = bytearray(exported.read_bytes())
    for offset in range(len(data) - 64, len(data) - 32):  # inside the last tensor's bytes
        data[offset] ^= 0xFF
    damaged.write_bytes(bytes(data))
    line = one_error(["evaluate", str(damaged)])
    assert f"{damaged} is corrupt or was edited: checksum mismatch" in line


def test_an_export_must_fit_its_spec(exported: Path, tmp_path: Path) -> None:
    missing = rewrite_export(exported, tmp_path / "missing.safetensors", lambda t: t.pop("layers.0.weight"))
    assert f"{missing}: tensor layers.0.weight: missing; the spec expects shape [12, 16]" in one_error(["evaluate", str(missing)])

    def wrong_shape(tensors: dict[str, torch.Tensor]) -> None:
        tensors["layers.0.weight"] = torch.zeros(12, 15)

    bad = rewrite_export(exported, tmp_path / "shape.safetensors", wrong_shape)
    line = one_error(["evaluate", str(bad)])
    assert f"{bad}: tensor layers.0.weight: torch.float32 of shape [12, 15]; the spec expects" in line and "[12, 16]" in line


def test_a_broken_embedded_spec_names_the_file_and_field(exported: Path, tmp_path: Path) -> None:
    def break_spec(metadata: dict[str, str]) -> None:
        spec = json.loads(metadata["spec_json"])
        spec["layers"][0]["out_features"] = "twelve"
        metadata["spec_json"] = json.dumps(spec)

    broken = rewrite_export(exported, tmp_path / "spec.safetensors", edit_metadata=break_spec)
    assert f"{broken}: metadata spec_json: layers[0].out_features:" in one_error(["evaluate", str(broken)])
