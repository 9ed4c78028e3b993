"""The run folder: everything one `uhn train` writes, and where.

    DIR/plan.pt              the compiled plan (descriptors, ranges): what resume, export and
                             evaluate regenerate the weights from
    DIR/config.yaml          the resolved spec (after --set overrides)
    DIR/run.json             seed, options, the precision the run trains in (``auto``
                             resolved once, at the start), package versions, the machine (CPU,
                             threads, OpenMP settings), world_size, git revision (of an
                             editable install's source)
    DIR/metrics.jsonl        one JSON record per log point (init, train, eval, resume)
    DIR/checkpoints/<k>.pt   the latest good checkpoint of phase k (uhn or direct)
    DIR/summary.json         the final metrics of the run
    DIR/.uhn-lock            the pid of the process training in the folder (see below)

Every file is written through ``uhn_spec.files.atomic_write`` (complete or absent, with the
umask's mode); metrics.jsonl is appended line by line. In a distributed run (torchrun) every
rank opens the folder and rank 0 alone writes it: the others' ``RunDir`` has ``writes`` off.

A run folder is written by one process at a time: ``claimed_run_folder`` holds an flock on
``.uhn-lock`` for the whole of a training or a resume (the kernel drops it when the process
ends, however it ends, so a killed run never blocks the next). Nothing is written through a
symbolic link: a run folder where one of uhn's files or folders is a link (which would make
uhn write outside it) is refused, appends and truncation open with O_NOFOLLOW, and
``atomic_write`` replaces a link rather than following it. A new run goes only into a missing
or empty folder.
"""

from __future__ import annotations

import datetime
import fcntl
import importlib.metadata
import json
import os
import platform
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from uhn_spec.errors import UHNError
from uhn_spec.files import append_text, atomic_write_text, ensure_folder, temp_name_pattern, truncate_file, writing
from uhn_spec.plan import Plan, load_plan
from uhn_spec.spec import MAX_NAME_LENGTH, spec_to_yaml

from .precision import Precision, PrecisionName
from .run_record import RunRecord, SummaryRecord, load_record

# Environment variables that set how many threads the OpenMP/BLAS runtimes use and how they wait.
THREAD_ENV_PREFIXES = ("OMP_", "KMP_", "GOMP_", "MKL_", "OPENBLAS_")
LOCK_FILE = ".uhn-lock"
# What uhn (train, plot, reproduce) writes at a run folder's top level, and its folders, which
# hold only uhn's files: none of them may be a symbolic link.
RUN_FILES = (
    "plan.pt",
    "config.yaml",
    "run.json",
    "metrics.jsonl",
    "summary.json",
    "models.csv",
    "curves.png",
    "reproduce.json",
    LOCK_FILE,
)
RUN_FOLDERS = ("checkpoints", "tensorboard")


class RunDirError(UHNError):
    """A run folder is missing, incomplete or already used."""


def package_versions() -> dict[str, str]:
    try:
        uhn = importlib.metadata.version("uhn")
    except importlib.metadata.PackageNotFoundError:
        uhn = "unknown"
    return {"uhn": uhn, "torch": torch.__version__, "python": platform.python_version()}


def source_folder() -> Path | None:
    """The source folder of an editable install of uhn, as the installed distribution records
    it (its direct_url.json); None for any other install, whose files say nothing of a source."""
    for dist in importlib.metadata.distributions(name="uhn"):  # a build's uhn.egg-info has none
        text = dist.read_text("direct_url.json")
        if text is None:
            continue
        try:
            record = json.loads(text)
        except ValueError:
            return None
        url = record.get("url", "") if isinstance(record, dict) else ""
        dir_info = record.get("dir_info") if isinstance(record, dict) else None
        if not (isinstance(dir_info, dict) and dir_info.get("editable") and url.startswith("file://")):
            return None
        return Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
    return None


def git_revision(folder: Path | None) -> str | None:
    """The commit of the git checkout whose root is ``folder`` (with "+dirty" for local
    changes); None without a folder, or when it is not the root of a git checkout (a source
    folder that sits inside some other repository)."""
    if folder is None or not folder.is_dir():
        return None
    try:
        run = lambda *args: subprocess.run(  # noqa: E731
            ["git", *args], cwd=folder, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        if Path(run("rev-parse", "--show-toplevel")).resolve() != folder.resolve():
            return None
        revision = run("rev-parse", "HEAD")
        return revision + ("+dirty" if run("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    """The CPU's marketing name (Linux: /proc/cpuinfo), else what the platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info(with_gpus: bool = True) -> dict[str, Any]:
    """What a run's speed (and, through thread counts, its last digits) depends on. GPU names
    only ``with_gpus``: asking for them starts CUDA, which a CPU run should not pay for."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "thread_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(THREAD_ENV_PREFIXES)},
    }
    if with_gpus and torch.cuda.is_available():
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def default_run_dir(spec_name: str) -> Path:
    """``runs/<name>/<timestamp>``. Spec names are validated (``SpecName``), but a plan file's
    target names are only as safe as the file, and a multi-task label joins many: a name that
    is not one ordinary path component is refused, a long one shortened to MAX_NAME_LENGTH."""
    folder = spec_name[:MAX_NAME_LENGTH]
    if not folder or folder.startswith(".") or any(c in folder for c in "/\\\0"):
        raise UHNError(
            f"the run's name {spec_name[:40]!r} cannot name a folder under runs/; give the run folder with -o"
        )
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / folder / stamp


class RunDir:
    def __init__(self, root: Path, writes: bool = True):
        self.root = Path(root)
        self.writes = writes  # False on the ranks of a distributed run but rank 0

    plan_path = property(lambda self: self.root / "plan.pt")
    config_path = property(lambda self: self.root / "config.yaml")
    info_path = property(lambda self: self.root / "run.json")
    metrics_path = property(lambda self: self.root / "metrics.jsonl")
    summary_path = property(lambda self: self.root / "summary.json")

    def checkpoint_path(self, kind: str) -> Path:
        return self.root / "checkpoints" / f"{kind}.pt"

    @staticmethod
    def create(root: Path, plan: Plan, info: dict[str, Any], world_size: int = 1) -> RunDir:
        """A new run in ``root``, which must be missing or empty (see ``check_new_run_folder``)."""
        run = RunDir(root)
        check_new_run_folder(root)
        ensure_folder(root)
        plan.save(run.plan_path)
        atomic_write_text(run.config_path, spec_to_yaml(plan.trained_target.spec))
        record = {
            **info,
            "seed": plan.trained_target.spec.train.seed,
            "versions": package_versions(),
            "git_revision": git_revision(source_folder()),
            "machine": machine_info(with_gpus=info.get("device") != "cpu"),
            "world_size": world_size,  # processes training together (torchrun's WORLD_SIZE)
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        atomic_write_text(run.info_path, json.dumps(record, indent=2) + "\n")
        return run

    @staticmethod
    def open(root: Path, writes: bool = True) -> RunDir:
        run = RunDir(root, writes)
        if not run.info_path.is_file() or not run.plan_path.is_file():
            raise RunDirError(
                f"{root} is not a uhn run folder (no run.json and plan.pt); "
                f"start one with `uhn train SPEC --out {root}`"
            )
        return run

    def info(self) -> dict[str, Any]:
        """run.json, checked field by field (``run_record.RunRecord``): a damaged or edited
        file is named with its field, not a KeyError or a wrong setting later."""
        fix = f"restore it, or start a new run with `uhn train SPEC --out DIR` (the plan is in {self.plan_path})"
        return load_record(self.info_path, RunRecord, fix)[1]

    def plan(self) -> Plan:
        return load_plan(self.plan_path)

    def precision(self, asked: PrecisionName, device: torch.device) -> Precision:
        """The precision this run trains and generates in, ``asked`` being its spec's
        train.precision. ``auto`` is what the run resolved when it started (run.json), so a
        resume, an export or an evaluation on another machine uses the precision the run was
        trained and measured in. A run from before run.json recorded it falls back to its
        summary.json, which did (``auto`` has changed meaning since: by the CPU, then by the task
        kind too), and only a run with neither resolves ``auto`` here, for its plan's kinds."""
        if asked != "auto":
            return Precision.resolve(asked, device, ())
        record = self.info()
        if "precision" not in record:
            record = self.summary() or {}
        if record.get("precision") is None:
            return Precision.resolve(asked, device, self.plan().task_types)
        recorded = Precision.resolve(record["precision"], device, ())
        return Precision(device.type, recorded.dtype, record.get("precision_reason", recorded.reason))

    def log(self, record: dict[str, Any]) -> None:
        # One short line per append: a killed run leaves at most one partial last line.
        if self.writes:
            append_text(self.metrics_path, json.dumps(record) + "\n")

    def metrics_size(self) -> int:
        """Bytes of metrics.jsonl so far: a checkpoint records it (see ``truncate_metrics``)."""
        return self.metrics_path.stat().st_size if self.metrics_path.is_file() else 0

    def truncate_metrics(self, size: int) -> None:
        """Cut metrics.jsonl back to ``size`` bytes: a resumed run drops what it will log again."""
        if self.writes and self.metrics_size() > size:
            truncate_file(self.metrics_path, size)

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.writes:
            atomic_write_text(self.summary_path, json.dumps(summary, indent=2) + "\n")

    def summary(self) -> dict[str, Any] | None:
        """summary.json, checked (``run_record.SummaryRecord``); None before the run finished."""
        if not self.summary_path.is_file():
            return None
        return load_record(self.summary_path, SummaryRecord, "restore it, or remove it to evaluate the run again")[1]


# --------------------------------------------------------------------------- one writer, no links


def check_new_run_folder(root: Path) -> None:
    """A new run goes into a missing or empty folder: one that holds a run, or anything but
    uhn's lock and temporary files, is refused (uhn would mix its files with others')."""
    if (root / "run.json").exists() or (root / "run.json").is_symlink():
        raise RunDirError(
            f"{root} already holds a run; continue it with `uhn train --resume {root}` or pick another --out"
        )
    if not root.is_dir():
        return
    with writing(root):
        names = sorted(os.listdir(root))
    leftovers = [temp_name_pattern(root / name) for name in RUN_FILES]
    others = [n for n in names if n != LOCK_FILE and not any(p.fullmatch(n) for p in leftovers)]
    if others:
        raise RunDirError(
            f"{root}: not empty and not a uhn run (no run.json; it holds {others[0]!r}"
            f"{f' and {len(others) - 1} more' if len(others) > 1 else ''}); give a new or empty folder with --out"
        )


def linked_run_files(root: Path) -> list[Path]:
    """uhn's files and folders in the run folder ``root`` that are symbolic links."""
    found = [root / name for name in (*RUN_FILES, *RUN_FOLDERS) if (root / name).is_symlink()]
    for name in RUN_FOLDERS:
        folder = root / name
        if folder.is_dir() and not folder.is_symlink():
            for parent, folders, files in os.walk(folder):  # does not descend into linked folders
                found += [Path(parent) / n for n in (*folders, *files) if (Path(parent) / n).is_symlink()]
    return found


def check_no_links(root: Path) -> None:
    """Refuse a run folder where uhn would write through a symbolic link (and so outside it)."""
    linked = linked_run_files(root)
    if linked:
        more = f" (and {len(linked) - 1} more)" if len(linked) > 1 else ""
        raise RunDirError(
            f"{linked[0]}: a symbolic link{more} in the run folder; uhn never writes through links (it would write "
            f"outside {root}): replace it with the file or folder itself"
        )


@contextmanager
def run_folder_lock(root: Path) -> Iterator[None]:
    """Hold ``root`` (an existing folder) for this process while the block runs: an flock on
    ``root/.uhn-lock``, which records the holder's pid. A second holder is refused with one
    line naming that pid; the kernel releases the lock when its process ends, however it ends."""
    path = root / LOCK_FILE
    with writing(path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(
                f"run folder {root} is in use by {_lock_holder(fd)}; wait for it to end, or train into another --out"
            ) from None
        with writing(path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def _lock_holder(fd: int) -> str:
    """ "pid N" from a held lock file; the holder may not have written it yet."""
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return f"pid {text}" if text.isdigit() else "another process"


@contextmanager
def claimed_run_folder(root: Path, new: bool) -> Iterator[None]:
    """``root`` held for this process's writes while the block runs (``run_folder_lock``), with
    no symbolic link among uhn's files. ``new``: made if missing, and refused (before anything
    is written into it) when it holds a run or other files."""
    if new:
        check_new_run_folder(root)
        ensure_folder(root)
    with run_folder_lock(root):
        if new:
            check_new_run_folder(root)  # again, now that no other uhn can start a run in it
        check_no_links(root)
        yield
