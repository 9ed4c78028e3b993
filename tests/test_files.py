"""Verified files: what uhn writes respects the umask and is refused with one line when damaged.

Covers the atomic writer, checkpoints of the wrong phase, damaged run.json, exports with
flipped bytes, missing or misshapen tensors and a broken embedded spec, and the machine
facts and git revision recorded in run.json.
"""

from __future__ import annotations

import errno
import importlib.metadata
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from tests.conftest import REPO_ROOT, one_error
from tests.tiny_specs import tiny_spec_yaml
from uhn_runtime.train.run_dir import git_revision, source_folder
from uhn_spec.files import atomic_write, atomic_write_text

runner = CliRunner()


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
    assert set(machine["thread_env"]) == {
        k for k in os.environ if k.startswith(("OMP_", "KMP_", "GOMP_", "MKL_", "OPENBLAS_"))
    }
    assert info["versions"]["torch"] == torch.__version__ and info["world_size"] == 1


def test_git_revision_only_from_an_editable_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("not running from a git checkout")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
    assert (git_revision(REPO_ROOT) or "").startswith(head)
    if source_folder() is not None:  # the tests run from an editable install: its metadata names the checkout
        assert source_folder() == REPO_ROOT
    # A source folder inside some other repository records none; a regular install has no source folder.
    other = tmp_path / "project"
    (other / "site-packages").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(other)], check=True)
    assert git_revision(other / "site-packages") is None and git_revision(None) is None

    class Installed:
        def __init__(self, direct_url: str | None) -> None:
            self.direct_url = direct_url

        def read_text(self, name: str) -> str | None:
            return self.direct_url if name == "direct_url.json" else None

    for record in (
        '{"url": "file:///src/uhn", "dir_info": {}}',
        '{"url": "https://x/uhn.whl", "archive_info": {}}',
        "{",
    ):
        monkeypatch.setattr(importlib.metadata, "distributions", lambda **_: [Installed(None), Installed(record)])  # noqa: B023  called in this pass
        assert source_folder() is None, record
    editable = '{"url": "file:///src/my%20uhn", "dir_info": {"editable": true}}'
    monkeypatch.setattr(importlib.metadata, "distributions", lambda **_: [Installed(editable)])
    assert source_folder() == Path("/src/my uhn")


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
    assert f"{missing}: tensor layers.0.weight: missing; the spec expects shape [12, 16]" in one_error(
        ["evaluate", str(missing)]
    )

    def wrong_shape(tensors: dict[str, torch.Tensor]) -> None:
        tensors["layers.0.weight"] = torch.zeros(12, 15)

    bad = rewrite_export(exported, tmp_path / "shape.safetensors", wrong_shape)
    line = one_error(["evaluate", str(bad)])
    assert (
        f"{bad}: tensor layers.0.weight: torch.float32 of shape [12, 15]; the spec expects" in line
        and "[12, 16]" in line
    )


def test_a_broken_embedded_spec_names_the_file_and_field(exported: Path, tmp_path: Path) -> None:
    def break_spec(metadata: dict[str, str]) -> None:
        spec = json.loads(metadata["spec_json"])
        spec["layers"][0]["out_features"] = "twelve"
        metadata["spec_json"] = json.dumps(spec)

    broken = rewrite_export(exported, tmp_path / "spec.safetensors", edit_metadata=break_spec)
    assert f"{broken}: metadata spec_json: layers[0].out_features:" in one_error(["evaluate", str(broken)])


# --------------------------------------------------------------------------- refused writes


def run_python(code: str, *args: str, file_size_limit: int | None = None) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter; ``file_size_limit``: under RLIMIT_FSIZE of that many
    bytes (SIGXFSZ ignored, as Python does, so a write past it fails with EFBIG)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit if file_size_limit is not None else None,
    )


def test_past_the_file_size_limit_an_export_and_a_checkpoint_are_one_line_and_keep_the_old_files(
    finished_run: Path, tmp_path: Path
) -> None:
    # torch.save's own failure is a RuntimeError "unexpected pos" and safetensors' a
    # SafetensorError; the OSError behind each is what the line names.
    code = (
        "import sys, torch\n"
        "from pathlib import Path\n"
        "from uhn_cli.main import app\n"
        "from uhn_runtime.train.checkpoint import save_checkpoint\n"
        "from uhn_spec.errors import UHNError\n"
        "try:\n    save_checkpoint(Path(sys.argv[1]), {'x': torch.zeros(10_000)})\n"
        "except UHNError as err:\n    print(err, flush=True)\n"
        "app(sys.argv[2:])\n"
    )
    checkpoint = tmp_path / "checkpoints" / "uhn.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"the checkpoint from before")
    export = tmp_path / "model.safetensors"
    export.write_bytes(b"the export from before")
    args = (str(checkpoint), "export", str(finished_run), "-o", str(export))
    done = run_python(code, *args, file_size_limit=1024)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    limit = "cannot write: the file would pass the file-size limit (ulimit -f)"
    assert done.stdout.strip() == f"{checkpoint}: {limit}"
    assert done.stderr.strip().splitlines()[-1] == f"error: {export}: {limit}"
    assert checkpoint.read_bytes() == b"the checkpoint from before" and os.listdir(checkpoint.parent) == ["uhn.pt"]
    assert export.read_bytes() == b"the export from before"
    assert sorted(os.listdir(tmp_path)) == ["checkpoints", "model.safetensors"]


def fails_like(kind: str) -> None:
    """How writers fail on a full disk: an OSError, torch.save's RuntimeError raised while
    handling one, safetensors' error that carries the errno in its message."""
    if kind == "oserror":
        raise OSError(errno.ENOSPC, "No space left on device")
    if kind == "torch":
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534") from None
    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.parametrize("kind", ["oserror", "torch", "safetensors"])
def test_a_full_disk_is_one_line_naming_the_file_and_keeps_the_old_one(tmp_path: Path, kind: str) -> None:
    from uhn_spec.files import WriteError

    path = atomic_write_text(tmp_path / "f.txt", "old")

    def write(tmp: Path) -> None:
        tmp.write_text("half")
        fails_like(kind)

    with pytest.raises(WriteError) as refused:
        atomic_write(path, write)
    assert str(refused.value) == f"{path}: cannot write: no space left on the device"
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]


def test_a_bug_in_a_writer_is_not_taken_for_a_write_error(tmp_path: Path) -> None:
    def write(tmp: Path) -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        atomic_write(tmp_path / "f.txt", write)


def read_only_under(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every write under ``root`` fail as on a read-only mount (EROFS): tests run as root,
    which ignores permission bits, so chmod cannot make a folder read-only for them."""
    inside = lambda path: Path(os.path.abspath(os.fsdecode(path))).is_relative_to(root)  # noqa: E731
    real_open, real_mkdir, real_replace = os.open, os.mkdir, os.replace
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def refuse(path: Any) -> OSError:
        return OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    def fake_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & writes and inside(path):
            raise refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        if inside(path) and not os.path.isdir(path):
            raise refuse(path)
        real_mkdir(path, *args, **kwargs)

    def fake_replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if inside(dst):
            raise refuse(src)
        real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    monkeypatch.setattr(os, "replace", fake_replace)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_read_only_run_folder_is_one_line_and_stays_as_it_was(
    run_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (run_copy / ".uhn-lock").unlink(missing_ok=True)
    before = snapshot(run_copy)
    read_only_under(run_copy, monkeypatch)
    line = one_error(["train", "--resume", str(run_copy)])
    assert line == f"error: {run_copy / '.uhn-lock'}: cannot write: the file system is read-only"
    read_only = "cannot write: the file system is read-only"
    assert one_error(["plot", str(run_copy)]) == f"error: {run_copy / 'curves.png'}: {read_only}"
    target = run_copy / "m.safetensors"
    assert one_error(["export", str(run_copy), "-o", str(target)]) == f"error: {target}: {read_only}"
    assert snapshot(run_copy) == before


def test_a_new_run_in_a_read_only_folder_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(tiny_spec_yaml(epochs=1, init_steps=0))
    mount = tmp_path / "mount"
    mount.mkdir()
    read_only_under(mount, monkeypatch)
    line = one_error(["train", str(spec), "-o", str(mount / "run"), "--device", "cpu"])
    assert line == f"error: {mount / 'run'}: cannot write: the file system is read-only"
    assert os.listdir(mount) == []


NOWHERE = "a symbolic link that leads nowhere (dangling or a loop)"


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda tmp: os.symlink(tmp / "nowhere", tmp / "out"), NOWHERE),
        (lambda tmp: os.symlink(tmp / "out", tmp / "out"), NOWHERE),
        (lambda tmp: (tmp / "out").write_text("a file"), "a file or a symbolic link is in the way of the folder"),
    ],
    ids=["dangling-link", "link-loop", "a-file"],
)
def test_an_out_folder_that_cannot_be_made_is_one_line(tmp_path: Path, make: Any, problem: str) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(tiny_spec_yaml(epochs=1, init_steps=0))
    make(tmp_path)
    assert one_error(["train", str(spec), "-o", str(tmp_path / "out"), "--device", "cpu"]) == (
        f"error: {tmp_path / 'out'}: cannot write: {problem}"
    )
    under_a_file = tmp_path / "tiny.yaml" / "run"
    assert one_error(["train", str(spec), "-o", str(under_a_file), "--device", "cpu"]) == (
        f"error: {under_a_file}: cannot write: a part of the path is a file, not a folder"
    )


# --------------------------------------------------------------------------- temporary files


def test_a_killed_writers_temp_file_is_removed_by_the_next_write(tmp_path: Path) -> None:
    path = tmp_path / "uhn.pt"
    code = (
        "import sys, time\n"
        "from uhn_spec.files import atomic_write\n"
        "def write(tmp):\n    tmp.write_text('half')\n    print('writing', flush=True)\n    time.sleep(120)\n"
        "atomic_write(sys.argv[1], write)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
    finally:
        writer.kill()  # SIGKILL: no finally block of the writer runs
        writer.wait()
    left = [name for name in os.listdir(tmp_path) if name.startswith(f".uhn.pt.{writer.pid}.")]
    assert len(left) == 1 and left[0].endswith(".tmp")
    live = tmp_path / f".uhn.pt.{os.getppid()}.0123abcd.tmp"  # a writer still running keeps its file
    other = tmp_path / ".other.pt.1.0123abcd.tmp"  # another file's
    live.write_text("x")
    other.write_text("x")
    atomic_write_text(path, "new")
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name, "uhn.pt"]) and path.read_text() == "new"
