"""What a run shows and leaves besides its checkpoints: progress bars on a terminal, plain
lines elsewhere, TensorBoard event files and `uhn plot` curves."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import KillAfter, RunInterrupted, one_error
from tests.tiny_specs import tiny_plan, tiny_spec_yaml
from uhn_cli.main import app
from uhn_runtime.io.plot import curves, read_metrics
from uhn_runtime.train.run import TrainOptions, resume_run, start_run
from uhn_runtime.train.run_dir import RunDir
from uhn_spec.errors import UHNError

runner = CliRunner()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_tiny(root: Path, stream: io.StringIO | None = None, **options) -> dict:  # type: ignore[no-untyped-def]
    plan = tiny_plan(epochs=2, eval_every=1)
    return start_run(plan, root, TrainOptions(device="cpu", progress=stream or io.StringIO(), **options))


# --------------------------------------------------------------------------- progress


def test_a_terminal_gets_bars_with_eta_and_the_epoch_lines(tmp_path: Path) -> None:
    shown = Terminal()
    run_tiny(tmp_path / "run", shown)
    text = shown.getvalue()
    assert "eta" in text and "uhn train" in text and "uhn init" in text  # the live bars
    assert "uhn epoch 2/2  loss" in text  # the lines that stay


def test_a_pipe_gets_plain_lines_only(tmp_path: Path) -> None:
    shown = io.StringIO()
    run_tiny(tmp_path / "run", shown)
    text = shown.getvalue()
    assert "\x1b[" not in text and "eta" not in text
    assert sum(line.startswith("uhn epoch") for line in text.splitlines()) == 2


# --------------------------------------------------------------------------- TensorBoard


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_event_files_hold_the_metrics_records(tmp_path: Path) -> None:
    run_tiny(tmp_path / "run", tensorboard=True)
    records = read_metrics(RunDir(tmp_path / "run"))
    train = [r for r in records if r["event"] == "train"]
    logged = scalars(tmp_path / "run" / "tensorboard" / "uhn")
    assert [step for step, _ in logged["train/loss"]] == [1, 2]
    assert [value for _, value in logged["train/loss"]] == pytest.approx([r["loss"] for r in train])
    assert [step for step, _ in logged["test/accuracy"]] == [1, 2]  # during training and the final one
    init = scalars(tmp_path / "run" / "tensorboard" / "uhn_init")
    assert init["init/loss"] and init["init/lr"]


def test_a_resumed_run_hides_what_the_killed_run_logged_past_its_checkpoint(tmp_path: Path) -> None:
    plan = tiny_plan(epochs=4)
    killed = TrainOptions(
        device="cpu", progress=io.StringIO(), tensorboard=True, observers=(KillAfter(3),), checkpoint_seconds=3600
    )
    with pytest.raises(RunInterrupted):
        start_run(plan, tmp_path / "run", killed)  # logged epochs 1-3; its checkpoint is from before epoch 1
    resume_run(tmp_path / "run", TrainOptions(device="cpu", progress=io.StringIO()))
    logged = scalars(tmp_path / "run" / "tensorboard" / "uhn")
    assert [step for step, _ in logged["train/loss"]] == [1, 2, 3, 4]
    train = [r for r in read_metrics(RunDir(tmp_path / "run")) if r["event"] == "train"]
    assert [value for _, value in logged["train/loss"]] == pytest.approx([r["loss"] for r in train])


def test_missing_tensorboard_is_one_line_naming_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import fails as when not installed
    spec = tmp_path / "tiny.yaml"
    spec.write_text(tiny_spec_yaml(epochs=1))
    result = runner.invoke(app, ["train", str(spec), "--out", str(tmp_path / "run"), "--set", "train.tensorboard=true"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "error: train.tensorboard: TensorBoard is not installed; install it with pip install 'uhn[tensorboard]'"
    )


# --------------------------------------------------------------------------- uhn plot


def test_plot_writes_a_png_of_loss_lr_and_metric(tmp_path: Path) -> None:
    run_tiny(tmp_path / "run")
    unit, panels = curves(read_metrics(RunDir(tmp_path / "run")))
    assert unit == "epoch" and list(panels) == ["loss", "lr", "accuracy"]
    assert panels["loss"]["uhn"][0] == [1, 2]
    result = runner.invoke(app, ["plot", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    png = (tmp_path / "run" / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_plot_reads_a_killed_runs_partial_last_line(tmp_path: Path) -> None:
    run_tiny(tmp_path / "run")
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"phase": "uhn", "event": "tr')
    result = runner.invoke(app, ["plot", str(tmp_path / "run"), "-o", str(tmp_path / "out.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out.png").is_file()


def test_missing_matplotlib_is_one_line_naming_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_tiny(tmp_path / "run")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = runner.invoke(app, ["plot", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert result.output.strip() == "error: uhn plot needs matplotlib; install it with pip install 'uhn[plot]'"


# --------------------------------------------------------------------------- writing only inside the run folder


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("outputs") / "run"
    start_run(tiny_plan(epochs=1, init_steps=0), root, TrainOptions(device="cpu", progress=io.StringIO()))
    return root


def link_outside(run: Path, name: str, outside: Path) -> None:
    """Move the run's ``name`` to ``outside`` and leave a symbolic link to it in its place."""
    shutil.move(run / name, outside)
    os.symlink(outside, run / name)


def contents(path: Path) -> dict[str, bytes]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): p.read_bytes() for p in files}


@pytest.mark.parametrize("name", ["metrics.jsonl", "checkpoints", "checkpoints/uhn.pt", "run.json"])
def test_resume_refuses_a_run_folder_with_a_linked_file(run_copy: Path, tmp_path: Path, name: str) -> None:
    outside = tmp_path / "outside"
    link_outside(run_copy, name, outside)
    if name != "checkpoints/uhn.pt":
        (run_copy / "checkpoints" / "uhn.pt").unlink()  # the resume would train (and write) again
    before = contents(outside)
    line = one_error(["train", "--resume", str(run_copy)])
    refused = f"error: {run_copy / name}: a symbolic link in the run folder; uhn never writes through links"
    assert line.startswith(refused)
    assert contents(outside) == before


def test_a_new_run_refuses_a_folder_that_holds_other_files(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(tiny_spec_yaml(epochs=1, init_steps=0))
    victim = tmp_path / "victim.txt"
    victim.write_text("not uhn's")
    for folder, entry in (("notes", "notes.txt"), ("linked", "metrics.jsonl")):
        (tmp_path / folder).mkdir()
        if entry == "notes.txt":
            (tmp_path / folder / entry).write_text("the user's")
        else:
            os.symlink(victim, tmp_path / folder / entry)
        line = one_error(["train", str(spec), "-o", str(tmp_path / folder), "--device", "cpu"])
        assert line == (
            f"error: {tmp_path / folder}: not empty and not a uhn run (no run.json; it holds {entry!r}); "
            "give a new or empty folder with --out"
        )
        assert os.listdir(tmp_path / folder) == [entry]
    assert victim.read_text() == "not uhn's"


def test_an_empty_out_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(tiny_spec_yaml(epochs=1, init_steps=0))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", str(spec), "-o", "", "--device", "cpu"], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert result.stderr == "error: -o: an empty path; name the folder or file to write\n"
    assert os.listdir(tmp_path) == ["tiny.yaml"]


def test_metrics_are_never_appended_or_cut_through_a_link(run_copy: Path, tmp_path: Path) -> None:
    from uhn_spec.errors import UHNError

    victim = tmp_path / "victim.jsonl"
    victim.write_text("the user's\n")
    (run_copy / "metrics.jsonl").unlink()
    os.symlink(victim, run_copy / "metrics.jsonl")
    run = RunDir(run_copy)
    with pytest.raises(UHNError, match="metrics.jsonl: cannot write: a symbolic link"):
        run.log({"event": "train"})
    with pytest.raises(UHNError, match="metrics.jsonl: cannot write: a symbolic link"):
        run.truncate_metrics(0)
    assert victim.read_text() == "the user's\n"


# --------------------------------------------------------------------------- one writer at a time


def test_a_run_folder_in_use_is_refused_with_the_pid(run_copy: Path, tmp_path: Path) -> None:
    from uhn_runtime.train.run_dir import run_folder_lock

    spec = tmp_path / "tiny.yaml"
    spec.write_text(tiny_spec_yaml(epochs=1, init_steps=0))
    empty = tmp_path / "empty"
    empty.mkdir()
    new_run, resume = ["train", str(spec), "-o", str(empty)], ["train", "--resume", str(run_copy)]
    for root, args in ((empty, new_run), (run_copy, resume)):
        with run_folder_lock(root):
            line = one_error([*args, "--device", "cpu"])
        in_use = f"run folder {root} is in use by pid {os.getpid()}"
        assert line == f"error: {in_use}; wait for it to end, or train into another --out"
    assert os.listdir(empty) == [".uhn-lock"]


def test_a_killed_holder_does_not_keep_the_run_folder_locked(tmp_path: Path) -> None:
    from uhn_runtime.train.run_dir import run_folder_lock

    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from uhn_runtime.train.run_dir import run_folder_lock\n"
        "with run_folder_lock(Path(sys.argv[1])):\n    print('locked', flush=True)\n    time.sleep(120)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(UHNError, match=f"in use by pid {holder.pid}"):
            with run_folder_lock(tmp_path):
                pass
    finally:
        holder.kill()  # SIGKILL: the lock file stays, with the dead holder's pid in it
        holder.wait()
    with run_folder_lock(tmp_path):
        assert (tmp_path / ".uhn-lock").read_text() == f"{os.getpid()}\n"
