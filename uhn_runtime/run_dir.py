"""The run folder: everything one `uhn train` writes, and where.

    DIR/plan.pt              the compiled plan (descriptors, ranges): what resume, export and
                             evaluate regenerate the weights from
    DIR/config.yaml          the resolved spec (after --set overrides)
    DIR/run.json             seed, options, package versions, git revision
    DIR/metrics.jsonl        one JSON record per log point (init, train, eval, resume)
    DIR/checkpoints/<k>.pt   the latest good checkpoint of phase k (uhn or direct)
    DIR/summary.json         the final metrics of the run
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch

from uhn_spec.errors import UHNError
from uhn_spec.plan import Plan, load_plan
from uhn_spec.spec import spec_to_yaml

REPO_ROOT = Path(__file__).resolve().parent.parent


class RunDirError(UHNError):
    """A run folder is missing, incomplete or already used."""


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def package_versions() -> dict[str, str]:
    try:
        uhn = importlib.metadata.version("uhn")
    except importlib.metadata.PackageNotFoundError:
        uhn = "unknown"
    return {"uhn": uhn, "torch": torch.__version__, "python": platform.python_version()}


def git_revision() -> str | None:
    """The source checkout's commit (with "+dirty" for local changes), or None outside git."""
    try:
        run = lambda *args: subprocess.run(  # noqa: E731
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        revision = run("rev-parse", "HEAD")
        return revision + ("+dirty" if run("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def default_run_dir(spec_name: str) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / spec_name / stamp


class RunDir:
    def __init__(self, root: Path):
        self.root = Path(root)

    plan_path = property(lambda self: self.root / "plan.pt")
    config_path = property(lambda self: self.root / "config.yaml")
    info_path = property(lambda self: self.root / "run.json")
    metrics_path = property(lambda self: self.root / "metrics.jsonl")
    summary_path = property(lambda self: self.root / "summary.json")

    def checkpoint_path(self, kind: str) -> Path:
        return self.root / "checkpoints" / f"{kind}.pt"

    @staticmethod
    def create(root: Path, plan: Plan, info: dict[str, Any]) -> "RunDir":
        run = RunDir(root)
        if run.info_path.exists():
            raise RunDirError(f"{root} already holds a run; continue it with `uhn train --resume {root}` or pick another --out")
        root.mkdir(parents=True, exist_ok=True)
        plan.save(run.plan_path)
        atomic_write_text(run.config_path, spec_to_yaml(plan.targets[0].spec))
        record = {
            **info,
            "seed": plan.targets[0].spec.train.seed,
            "versions": package_versions(),
            "git_revision": git_revision(),
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        atomic_write_text(run.info_path, json.dumps(record, indent=2) + "\n")
        return run

    @staticmethod
    def open(root: Path) -> "RunDir":
        run = RunDir(root)
        if not run.info_path.is_file() or not run.plan_path.is_file():
            raise RunDirError(f"{root} is not a uhn run folder (no run.json and plan.pt); start one with `uhn train SPEC --out {root}`")
        return run

    def info(self) -> dict[str, Any]:
        return json.loads(self.info_path.read_text())

    def plan(self) -> Plan:
        return load_plan(self.plan_path)

    def log(self, record: dict[str, Any]) -> None:
        # One short line per append: a killed run leaves at most one partial last line.
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def metrics_size(self) -> int:
        """Bytes of metrics.jsonl so far: a checkpoint records it (see ``truncate_metrics``)."""
        return self.metrics_path.stat().st_size if self.metrics_path.is_file() else 0

    def truncate_metrics(self, size: int) -> None:
        """Cut metrics.jsonl back to ``size`` bytes: a resumed run drops what it will log again."""
        if self.metrics_size() > size:
            os.truncate(self.metrics_path, size)

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.summary_path, json.dumps(summary, indent=2) + "\n")

    def summary(self) -> dict[str, Any] | None:
        return json.loads(self.summary_path.read_text()) if self.summary_path.is_file() else None
