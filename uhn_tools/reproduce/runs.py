"""One row x seed of a table as a `uhn train` run folder: the command that trains it, and
starting, resuming or reading it back. Resumable by the run folders themselves: a folder with
a summary.json is finished, one with a run.json but no summary is a killed run and continues
with ``resume_run``. A folder whose run was started with other overrides, or from a spec file
edited since, is refused, never silently reported as that row's result."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from uhn_runtime.device import resolve_device
from uhn_runtime.train.options import Observer
from uhn_runtime.train.precision import Precision
from uhn_runtime.train.run import TrainOptions, resume_run, start_run
from uhn_runtime.train.run_dir import RunDir
from uhn_spec.budget import check_fits, estimate_budget
from uhn_spec.compiler import compile_spec
from uhn_spec.modes.single import load_spec
from uhn_spec.spec import ExperimentSpec

from .tables import Budget, Table, TableError, TableRow


@dataclass(frozen=True)
class ReproduceOptions:
    budget: Budget = "cpu"
    out: Path = Path("runs/reproduce")
    data_root: str | None = None
    rows: tuple[str, ...] | None = None  # None: every row of the table
    seeds: tuple[int, ...] | None = None  # None: the budget's seeds of each row
    select_direct_lr: bool = True
    device: str = "auto"
    spec_root: Path | None = None  # None: the table's own (see load_table)
    progress: TextIO | None = None
    # Passed to every training run (``TrainOptions.observers``): e.g. a logger or an early stop.
    observers: tuple[Observer, ...] = ()


@dataclass
class SeedRun:
    """One row x seed: a `uhn train --mode both` run in its own folder."""

    row: TableRow
    seed: int
    spec_path: Path
    overrides: list[str]
    folder: Path
    shown_spec: str  # the spec path as the command shows it
    data_root: str | None
    estimate_seconds: float | None

    def command(self) -> str:
        return train_command(self.shown_spec, "both", self.data_root, self.overrides, self.folder)


def train_command(spec: str, mode: str, data_root: str | None, overrides: list[str], folder: Path) -> str:
    """The `uhn train` line that trains exactly what the harness trains in ``folder``."""
    words = ["uhn", "train", spec, "--mode", mode]
    if data_root:
        words += ["--data-root", data_root]
    for item in overrides:
        words += ["--set", item]
    return shlex.join([*words, "-o", str(folder)])


def lr_text(lr: float) -> str:
    """A learning rate as --set and folder names write it (YAML reads it back as a float)."""
    return repr(float(lr))


class TableRuns:
    """The run folders of one table at one budget, ``OUT/<table>/<budget>/<row>/seed_<seed>``."""

    def __init__(self, table: Table, spec_root: Path, options: ReproduceOptions):
        self.table, self.options = table, options
        self.spec_root = options.spec_root or spec_root
        self.stream = options.progress if options.progress is not None else sys.stderr
        self.folder = options.out / table.name / options.budget
        wanted = options.rows or tuple(row.name for row in table.rows)
        self.selected = [table.row(name) for name in wanted]

    def seeds(self, row: TableRow) -> list[int]:
        return list(self.options.seeds) if self.options.seeds else row.budgets[self.options.budget].seeds

    def row_folder(self, row: TableRow) -> Path:
        return self.folder / row.name

    def spec_path(self, row: TableRow) -> Path:
        path = self.spec_root / str(row.spec)
        if not path.is_file():
            raise TableError(
                f"{self.table.name}: rows[{row.name}].spec: {path} not found; run from a uhn checkout "
                "(its specs/ folder) or pass --specs-root"
            )
        return path

    def shown(self, path: Path) -> str:
        relative = os.path.relpath(path)
        return relative if not relative.startswith("..") else str(path)

    def seed_runs(self, row: TableRow, direct_lr: float | None) -> list[SeedRun]:
        plan = row.budgets[self.options.budget]
        path = self.spec_path(row)
        chosen = [f"train.direct_lr={lr_text(direct_lr)}"] if direct_lr is not None else []
        return [
            SeedRun(
                row=row,
                seed=seed,
                spec_path=path,
                overrides=[*plan.set, f"train.seed={seed}", *chosen],
                folder=self.row_folder(row) / f"seed_{seed}",
                shown_spec=self.shown(path),
                data_root=self.options.data_root,
                estimate_seconds=plan.estimate_seconds,
            )
            for seed in self.seeds(row)
        ]

    def say(self, text: str) -> None:
        print(f"reproduce: {text}", file=self.stream, flush=True)

    def train_folder(self, spec_path: Path, overrides: list[str], folder: Path, mode: str) -> dict[str, Any]:
        """Finish the `uhn train` run in ``folder``: start, resume or just read it."""
        run = RunDir(folder)
        options = TrainOptions(
            mode=mode,  # type: ignore[arg-type]  # a table row's mode: uhn, direct or both
            device=self.options.device,
            data_root=self.options.data_root,
            progress=self.stream,
            observers=self.options.observers,
        )
        if run.info_path.is_file():
            summary = self.finished_summary(folder, spec_path, overrides, mode)
            if summary is not None:
                return summary
            self.say(f"resuming the killed run in {folder}")
            return resume_run(folder, options)
        spec = self.load_spec(spec_path, overrides)
        plan = compile_spec(spec)
        source = {"source": str(spec_path), "overrides": list(overrides), "reproduce": self.table.name}
        return start_run(plan, folder, options, source)

    def finished_summary(self, folder: Path, spec_path: Path, overrides: list[str], mode: str) -> dict[str, Any] | None:
        """The summary of the finished run in ``folder`` (None: not finished or not started);
        refuses a run of other settings: other overrides or mode (a table whose budget changed
        since), or a spec file edited since the run started (its plan holds the spec it trains)."""
        run = RunDir(folder)
        if not run.info_path.is_file():
            return None
        recorded = run.info()
        fix = "remove the folder to retrain it, or pick another --out"
        if recorded.get("overrides") != overrides or recorded.get("mode") != mode:
            raise TableError(
                f"{folder}: holds a run of other settings (--set {recorded.get('overrides')}, mode "
                f"{recorded.get('mode')}; this table asks for --set {overrides}, mode {mode}); {fix}"
            )
        drift = self.spec_drift(run, self.load_spec(spec_path, overrides))
        if drift is not None:
            raise TableError(f"{folder}: trained from another version of {self.shown(spec_path)} ({drift}); {fix}")
        return run.summary()

    def spec_drift(self, run: RunDir, current: ExperimentSpec) -> str | None:
        """The first field where the run's spec differs from ``current`` ("train.lr: 0.001 in the
        run, 0.002 now"); None if they agree. Precision compares what the run trains in (``auto``
        as resolved when it started) with what ``current`` asks for on this device, so a spec that
        pins the precision ``auto`` gave the run does not count as changed."""
        trained = run.plan().trained_target.spec
        device = resolve_device(self.options.device)
        then = run.precision(trained.train.precision, device).name
        now = Precision.resolve(current.train.precision, device, run.plan().task_types).name
        if then != now:
            return f"train.precision: {then} in the run, {now} now"
        fields_then = flat_fields(trained.model_dump(mode="json"))
        fields_now = flat_fields(current.model_dump(mode="json"))
        changed = sorted(
            path
            for path in fields_then.keys() | fields_now.keys()
            if path != "train.precision" and fields_then.get(path, ABSENT) != fields_now.get(path, ABSENT)
        )
        if not changed:
            return None
        path = changed[0]
        return f"{path}: {fields_then.get(path, ABSENT)!r} in the run, {fields_now.get(path, ABSENT)!r} now"

    @staticmethod
    def load_spec(spec_path: Path, overrides: list[str]) -> ExperimentSpec:
        spec = load_spec(spec_path, overrides)
        check_fits(estimate_budget(spec), "train", str(spec_path))
        return spec


ABSENT = "absent"  # a field one of two specs lacks (a list of layers grew or shrank)


def flat_fields(data: Any, prefix: str = "") -> dict[str, Any]:
    """A JSON-like value as {"dotted.path": scalar}: "layers.0.kind", "train.lr"."""
    items: Iterable[tuple[str, Any]]
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list):
        items = ((str(i), value) for i, value in enumerate(data))
    else:
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat.update(flat_fields(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat
