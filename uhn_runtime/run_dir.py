"""The run folder: everything one `uhn train` writes, and where.

    DIR/plan.pt              the compiled plan (descriptors, ranges): what resume, export and
                             evaluate regenerate the weights from
    DIR/config.yaml          the resolved spec (after --set overrides)
    DIR/run.json             seed, options, the precision the run trains in (``auto``
                             resolved once, at the start), package versions, the machine (CPU,
                             threads, OpenMP settings), world_size, git revision (from a uhn
                             checkout)
    DIR/metrics.jsonl        one JSON record per log point (init, train, eval, resume)
    DIR/checkpoints/<k>.pt   the latest good checkpoint of phase k (uhn or direct)
    DIR/summary.json         the final metrics of the run

Every file is written through ``uhn_spec.files.atomic_write`` (complete or absent, with the
umask's mode); metrics.jsonl is appended line by line. In a distributed run (torchrun) every
rank opens the folder and rank 0 alone writes it: the others' ``RunDir`` has ``writes`` off.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import tomllib
from pathlib import Path
from typing import Any, get_args

import torch

from uhn_spec.errors import UHNError
from uhn_spec.files import atomic_write_text
from uhn_spec.plan import Plan, load_plan
from uhn_spec.spec import MAX_NAME_LENGTH, spec_to_yaml

from .optim import Precision, PrecisionName
from .weights import SourceKind

# Where the installed packages sit; a uhn source checkout when uhn runs from one.
PACKAGE_PARENT = Path(__file__).resolve().parent.parent
# Environment variables that set how many threads the OpenMP/BLAS runtimes use and how they wait.
THREAD_ENV_PREFIXES = ("OMP_", "KMP_", "GOMP_", "MKL_", "OPENBLAS_")
REQUIRED_INFO_FIELDS = ("mode", "seed")
# A run trains one weight source or both (uhn, then the direct baseline).
RUN_MODES = (*get_args(SourceKind), "both")


class RunDirError(UHNError):
    """A run folder is missing, incomplete or already used."""


def package_versions() -> dict[str, str]:
    try:
        uhn = importlib.metadata.version("uhn")
    except importlib.metadata.PackageNotFoundError:
        uhn = "unknown"
    return {"uhn": uhn, "torch": torch.__version__, "python": platform.python_version()}


def is_uhn_checkout(folder: Path) -> bool:
    """Whether ``folder`` is the root of a uhn source tree (its pyproject.toml names uhn)."""
    try:
        project = tomllib.loads((folder / "pyproject.toml").read_text()).get("project", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    return isinstance(project, dict) and project.get("name") == "uhn"


def git_revision(folder: Path = PACKAGE_PARENT) -> str | None:
    """The commit of the uhn checkout the code runs from (with "+dirty" for local changes);
    None for an installed copy, even one that happens to sit inside another git repository."""
    if not is_uhn_checkout(folder):
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
        raise UHNError(f"the run's name {spec_name[:40]!r} cannot name a folder under runs/; give the run folder with -o")
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
    def create(root: Path, plan: Plan, info: dict[str, Any], world_size: int = 1) -> "RunDir":
        run = RunDir(root)
        if run.info_path.exists():
            raise RunDirError(f"{root} already holds a run; continue it with `uhn train --resume {root}` or pick another --out")
        root.mkdir(parents=True, exist_ok=True)
        plan.save(run.plan_path)
        atomic_write_text(run.config_path, spec_to_yaml(plan.trained_target.spec))
        record = {
            **info,
            "seed": plan.trained_target.spec.train.seed,
            "versions": package_versions(),
            "git_revision": git_revision(),
            "machine": machine_info(with_gpus=info.get("device") != "cpu"),
            "world_size": world_size,  # processes training together (torchrun's WORLD_SIZE)
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        atomic_write_text(run.info_path, json.dumps(record, indent=2) + "\n")
        return run

    @staticmethod
    def open(root: Path, writes: bool = True) -> "RunDir":
        run = RunDir(root, writes)
        if not run.info_path.is_file() or not run.plan_path.is_file():
            raise RunDirError(f"{root} is not a uhn run folder (no run.json and plan.pt); start one with `uhn train SPEC --out {root}`")
        return run

    def info(self) -> dict[str, Any]:
        """run.json, checked: a damaged file is named, not a KeyError later."""
        path = self.info_path
        fix = f"restore it, or start a new run with `uhn train SPEC --out DIR` (the plan is in {self.plan_path})"
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RunDirError(f"{path}: not readable JSON ({err}); {fix}") from None
        if not isinstance(record, dict):
            raise RunDirError(f"{path}: holds a JSON {type(record).__name__}, not the run's record (an object); {fix}")
        for field in REQUIRED_INFO_FIELDS:
            if field not in record:
                raise RunDirError(f"{path}: {field}: missing; {fix}")
        if record["mode"] not in RUN_MODES:
            raise RunDirError(f"{path}: mode: {record['mode']!r} is not one of {', '.join(RUN_MODES)}; {fix}")
        return record

    def plan(self) -> Plan:
        return load_plan(self.plan_path)

    def precision(self, asked: PrecisionName, device: torch.device) -> Precision:
        """The precision this run trains and generates in, ``asked`` being its spec's
        train.precision. ``auto`` is what the run resolved when it started (run.json), so a
        resume, an export or an evaluation on another machine uses the precision the run was
        trained and measured in. A run from before run.json recorded it falls back to its
        summary.json, which did (``auto`` has changed meaning since: it is bf16 on more CPUs),
        and only a run with neither resolves ``auto`` here."""
        if asked != "auto":
            return Precision.resolve(asked, device)
        record, source = self.info(), self.info_path
        if "precision" not in record:
            record, source = self.summary() or {}, self.summary_path
        if "precision" not in record:
            return Precision.resolve(asked, device)
        if record["precision"] not in ("fp32", "bf16", "fp16"):
            raise RunDirError(
                f"{source}: precision: {record['precision']!r} is not fp32, bf16 or fp16; "
                "restore the file, or set the precision the run trained in"
            )
        recorded = Precision.resolve(record["precision"], device)
        return Precision(device.type, recorded.dtype, record.get("precision_reason", recorded.reason))

    def log(self, record: dict[str, Any]) -> None:
        # One short line per append: a killed run leaves at most one partial last line.
        if not self.writes:
            return
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def metrics_size(self) -> int:
        """Bytes of metrics.jsonl so far: a checkpoint records it (see ``truncate_metrics``)."""
        return self.metrics_path.stat().st_size if self.metrics_path.is_file() else 0

    def truncate_metrics(self, size: int) -> None:
        """Cut metrics.jsonl back to ``size`` bytes: a resumed run drops what it will log again."""
        if self.writes and self.metrics_size() > size:
            os.truncate(self.metrics_path, size)

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.writes:
            atomic_write_text(self.summary_path, json.dumps(summary, indent=2) + "\n")

    def summary(self) -> dict[str, Any] | None:
        return json.loads(self.summary_path.read_text()) if self.summary_path.is_file() else None
