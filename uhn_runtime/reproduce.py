"""`uhn reproduce`: rerun a table of the paper as ordinary `uhn train --mode both` runs.

A table (``reproduce_tables.py``, or a YAML file of the same shape) lists rows; each row x
seed is one run folder ``OUT/<table>/<budget>/<row>/seed_<seed>`` trained in-process through
``start_run`` exactly as ``uhn train SPEC --mode both --set ... -o FOLDER`` would. Resumable by
the run folders themselves: a folder with a summary.json is finished and skipped, one with a
run.json but no summary is a killed run and continues with ``resume_run``. A folder whose run
was started with other overrides, or from a spec file edited since, is refused, never silently
reported as that row's result.

The direct baseline's learning rate is chosen per row on a validation split, never on the
test split (``select_direct_lr``): for each lr of the row's grid, a `--mode direct` run of the
same budget with ``task.validate_split=true`` (the loaders hold out a seeded part of the
training data; Planetoid graphs have their public validation nodes) under the row's first
seed, scored on ``val``; the best lr then trains every seed. The choice is kept in
``OUT/<table>/<budget>/<row>/direct_lr.json`` so a resumed table does not sweep again.

At the end the results of every row whose seeds have all finished -- in this sitting or an
earlier one -- go into a JSON list and a markdown table; rows not run yet are left out and
counted, never filled in. A row whose run folders are not on this machine (a fresh clone)
keeps its record from the results file written before, so the table fills up over sittings.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO, TypeVar

from pydantic import Field, ValidationError, model_validator

from uhn_spec.budget import check_fits, estimate_budget
from uhn_spec.compiler import compile_spec
from uhn_spec.errors import UHNError
from uhn_spec.files import atomic_write_text
from uhn_spec.received import ReceivedFileError, load_received_json, load_received_yaml
from uhn_spec.spec import MAX_LR, ExperimentSpec, StrictModel, load_spec

from .optim import Precision, TrainingDiverged
from .reproduce_tables import BUILTIN_TABLES
from .run_dir import PACKAGE_PARENT, RunDir, is_uhn_checkout

Budget = Literal["cpu", "paper"]
BUDGETS: tuple[Budget, ...] = ("cpu", "paper")
Metric = Literal["accuracy", "rmse"]


class TableError(UHNError):
    """A table definition, a row name or a run folder does not fit what `uhn reproduce` asks."""


# ---------------------------------------------------------------------------- table schema


class BudgetPlan(StrictModel):
    """How a row trains at one budget."""

    set: list[str] = Field(default_factory=list, description="--set overrides on the row's spec")
    changes: str = Field(description="one line: what these overrides change against the spec")
    seeds: list[int] = Field(min_length=1)
    estimate_seconds: float | None = Field(None, gt=0, description="one seed, UHN + direct, idle 2-core CPU")


class PaperFigures(StrictModel):
    uhn: float | None = None
    direct: float | None = None


class TableRow(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    dataset: str
    model: str
    metric: Metric
    spec: str | None = Field(None, description="the spec file, relative to the table's spec root")
    note: str | None = Field(None, description="why the row has no spec (e.g. no data here)")
    budgets: dict[Budget, BudgetPlan] = Field(default_factory=dict)
    paper: PaperFigures = Field(default_factory=PaperFigures)
    direct_lr_grid: list[float] = Field(default_factory=list, description="direct lrs chosen from on val")
    direct_lr_rule: str = "the spec's train.direct_lr (else train.lr)"

    @model_validator(mode="after")
    def _spec_or_note(self) -> "TableRow":
        if (self.spec is None) == (self.note is None):
            raise ValueError("give a spec (a row that trains) or a note (why it cannot), exactly one")
        if self.spec is not None and set(self.budgets) != set(BUDGETS):
            raise ValueError(f"budgets: a row with a spec gives both budgets, {' and '.join(BUDGETS)}")
        return self

    @property
    def runnable(self) -> bool:
        return self.spec is not None


class Table(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    title: str
    rows: list[TableRow] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_rows(self) -> "Table":
        names = [row.name for row in self.rows]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"rows: {', '.join(twice)} named more than once; row names are folder names")
        return self

    def row(self, name: str) -> TableRow:
        for row in self.rows:
            if row.name == name:
                return row
        raise TableError(f"--rows: {name!r} is not a row of {self.name}; rows: {', '.join(r.name for r in self.rows)}")


def _validation_message(err: ValidationError) -> str:
    first = err.errors()[0]
    path = ".".join(str(part) for part in first["loc"] if not str(part).startswith("function-"))
    return f"{path}: {first['msg']}" if path else first["msg"]


def table_from_data(data: Any, source: str) -> Table:
    try:
        return Table.model_validate(data)
    except ValidationError as err:
        raise TableError(f"{source}: {_validation_message(err)}") from None


def default_spec_root() -> Path:
    """Where the built-in tables' ``specs/...`` paths live: the uhn checkout this code runs
    from, else the current folder (run from a checkout, or pass --specs-root)."""
    return PACKAGE_PARENT if is_uhn_checkout(PACKAGE_PARENT) else Path.cwd()


def load_table(name_or_path: str) -> tuple[Table, Path]:
    """A built-in table by name, or a YAML table file; with the folder its spec paths are
    relative to (a file's own folder)."""
    if name_or_path in BUILTIN_TABLES:
        return table_from_data(BUILTIN_TABLES[name_or_path], name_or_path), default_spec_root()
    path = Path(name_or_path)
    if not path.is_file():
        known = ", ".join(BUILTIN_TABLES)
        raise TableError(f"{name_or_path}: neither a built-in table ({known}) nor a table file")
    try:
        data = load_received_yaml(path, "table file")
    except ReceivedFileError as err:
        raise TableError(f"{err}; a table is a YAML mapping") from None
    return table_from_data(data, str(path)), path.resolve().parent


# ---------------------------------------------------------------------------- options and runs


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
    # Test hook, passed to every training run: stop (as if killed) after this many units.
    stop_after_units: int | None = None


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


class Harness:
    """Runs one table at one budget; ``run()`` trains what is missing, ``results()`` reads
    every finished row back."""

    def __init__(self, table: Table, spec_root: Path, options: ReproduceOptions):
        self.table, self.options = table, options
        self.spec_root = options.spec_root or spec_root
        self.stream = options.progress if options.progress is not None else sys.stderr
        self.folder = options.out / table.name / options.budget
        wanted = options.rows or tuple(row.name for row in table.rows)
        self.selected = [table.row(name) for name in wanted]

    # ------------------------------------------------------------------ planning
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

    # ------------------------------------------------------------------ running
    def say(self, text: str) -> None:
        print(f"reproduce: {text}", file=self.stream, flush=True)

    def run(self) -> None:
        """Train every selected row x seed that has not finished; a progress line per run
        and an ETA over what is left."""
        runnable = [row for row in self.selected if row.runnable]
        for row in self.selected:
            if not row.runnable:
                self.say(f"{row.name}: skipped, {row.note}")
        eta = Eta()
        for row in runnable:  # the ETA counts every run still to train, chosen lrs or not
            plan = row.budgets[self.options.budget]
            for seed in self.seeds(row):
                if RunDir(self.row_folder(row) / f"seed_{seed}").summary() is None:
                    eta.add(plan.estimate_seconds)
        total = len(eta.pending)
        sweeps = sum(self.sweep_runs_left(row) for row in runnable)
        # A sweep run trains the direct baseline alone, on less data: no row estimate fits it.
        also = f" and {sweeps} direct-lr sweep runs (not in the ETA)" if sweeps else ""
        self.say(f"{self.table.name} at the {self.options.budget} budget: {total} runs to train{also}; {eta.line()}")
        done = 0
        for row in runnable:
            direct_lr = self.direct_lr(row)
            for run in self.seed_runs(row, direct_lr.value if direct_lr.chosen else None):
                if self.finished_summary(run.folder, run.spec_path, run.overrides, "both") is not None:
                    self.say(f"{row.name} seed {run.seed}: finished earlier, skipped ({run.folder})")
                    continue
                done += 1
                self.say(f"[{done}/{total}] {row.name} seed {run.seed}: {run.command()}")
                started = time.monotonic()
                summary = self.train(run)
                # A resumed run's wall time is only what was left of it; its summary's seconds
                # (every phase, every sitting) are the pace the runs still to train will keep.
                seconds = max(time.monotonic() - started, float(summary["seconds"]))
                eta.finish(seconds)
                self.say(
                    f"[{done}/{total}] {row.name} seed {run.seed}: uhn {summary['uhn']:.4f}  direct {summary['direct']:.4f} "
                    f"{summary['metric']}  ({seconds:.0f} s); {eta.line()}"
                )

    def train(self, run: SeedRun) -> dict[str, Any]:
        load_before = load_average()
        started = time.monotonic()
        summary = self.train_folder(run.spec_path, run.overrides, run.folder, "both")
        record = {
            "command": run.command(),
            "load_average": [load_before, load_average()],
            "wall_seconds": round(time.monotonic() - started, 1),
        }
        atomic_write_text(run.folder / "reproduce.json", json.dumps(record, indent=2) + "\n")
        return summary

    def train_folder(self, spec_path: Path, overrides: list[str], folder: Path, mode: str) -> dict[str, Any]:
        """Finish the `uhn train` run in ``folder``: start, resume or just read it."""
        from .train import TrainOptions, resume_run, start_run

        run = RunDir(folder)
        options = TrainOptions(
            mode=mode,  # type: ignore[arg-type]
            device=self.options.device,
            data_root=self.options.data_root,
            progress=self.stream,
            stop_after_units=self.options.stop_after_units,
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
        from .train import resolve_device

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

    # ------------------------------------------------------------------ direct lr
    def direct_lr(self, row: TableRow) -> "DirectLr":
        """The direct baseline's learning rate of ``row``: chosen on val, or the row's rule."""
        if not self.options.select_direct_lr or not row.direct_lr_grid:
            reason = "--no-select-direct-lr" if row.direct_lr_grid else "the row has no grid"
            spec = self.load_spec(self.spec_path(row), row.budgets[self.options.budget].set)
            return DirectLr(spec.train.direct_lr or spec.train.lr, False, f"{row.direct_lr_rule} ({reason})", {})
        saved = self.current_choice(row)
        if saved is not None:
            return DirectLr(float(saved["value"]), True, saved["how"], saved["val"])
        return self.sweep_direct_lr(row, self.seeds(row)[0], self.row_folder(row) / "direct_lr.json")

    def current_choice(self, row: TableRow) -> dict[str, Any] | None:
        """The row's direct_lr.json when its sweep is the one the table runs now (grid, seed and
        protocol); else None: the row sweeps (again), reading back the lrs trained before."""
        saved = self.chosen_direct_lr(row)
        if saved is None:
            return None
        same_sweep = (
            sorted(map(float, saved.get("grid", []))) == sorted(row.direct_lr_grid)
            and saved.get("seed") == self.seeds(row)[0]
            and saved.get("edge_steps") == EDGE_STEPS
        )
        return saved if same_sweep else None

    def sweep_runs_left(self, row: TableRow) -> int:
        """The `--mode direct` runs of the row's grid its lr sweep has still to train (steps past
        an edge of the grid may add more)."""
        if not (self.options.select_direct_lr and row.direct_lr_grid) or self.current_choice(row) is not None:
            return 0
        return sum(RunDir(self.sweep_folder(row, lr)).summary() is None for lr in row.direct_lr_grid)

    def sweep_folder(self, row: TableRow, lr: float) -> Path:
        return self.row_folder(row) / "direct_lr" / f"lr_{lr_text(lr)}"

    def sweep_direct_lr(self, row: TableRow, seed: int, path: Path) -> "DirectLr":
        """Score each lr of the row's grid on val; while the best lies on an edge of what was
        tried, try the next lr past it (the grid's own ratio, at most EDGE_STEPS per side), so
        the chosen lr is never one the grid merely cut off."""
        grid = sorted(row.direct_lr_grid)
        scores: dict[str, float | None] = {}
        pending = list(grid)
        while pending:
            lr = pending.pop(0)
            scores[lr_text(lr)] = self.score_direct_lr(row, seed, lr)
            if not pending:
                pending = past_the_edge(grid, scores, row.metric)
        valid = {lr: score for lr, score in scores.items() if score is not None}
        if not valid:
            raise TableError(f"{row.name}: the direct baseline diverged at every lr tried ({', '.join(scores)}); give the row a lower direct_lr_grid")
        best = pick_best(valid, row.metric)
        how = (
            f"chosen from {', '.join(sorted(scores, key=float))} by val {row.metric} (task.validate_split: the training "
            f"data less a seeded held-out part; Planetoid: its public val nodes), seed {seed}, same budget"
        )
        record = {
            "value": float(best), "how": how, "val": scores, "seed": seed, "grid": row.direct_lr_grid, "edge_steps": EDGE_STEPS,
        }  # fmt: skip
        atomic_write_text(path, json.dumps(record, indent=2) + "\n")
        self.say(f"{row.name}: direct lr {best} (val {row.metric} {valid[best]:.4f})")
        return DirectLr(float(best), True, how, scores)

    def score_direct_lr(self, row: TableRow, seed: int, lr: float) -> float | None:
        """The val metric of a `--mode direct` run of the row's budget at ``lr``; None if it diverged."""
        from .data import load_task_data
        from .evaluate import evaluate_source
        from .export import load_trained_source
        from .train import resolve_device

        plan = row.budgets[self.options.budget]
        spec_path = self.spec_path(row)
        folder = self.sweep_folder(row, lr)
        overrides = [*plan.set, f"train.seed={seed}", "task.validate_split=true", f"train.direct_lr={lr_text(lr)}"]
        command = train_command(self.shown(spec_path), "direct", self.options.data_root, overrides, folder)
        self.say(f"{row.name}: direct lr {lr_text(lr)} on the validation split: {command}")
        try:
            self.train_folder(spec_path, overrides, folder, "direct")
        except TrainingDiverged as err:  # past an edge, a too-high lr is an answer, not a failure
            self.say(f"{row.name}: direct lr {lr_text(lr)}: diverged ({err})")
            return None
        source, target, precision = load_trained_source(RunDir(folder), "direct", resolve_device(self.options.device))
        data = load_task_data(target.plan.spec.task, self.options.data_root)
        score = evaluate_source(source, target, data, "val", precision)
        self.say(f"{row.name}: direct lr {lr_text(lr)}: val {row.metric} {score:.4f}")
        return score

    # ------------------------------------------------------------------ results
    def results(
        self, earlier: dict[str, dict[str, Any]] | None = None
    ) -> tuple[list[dict[str, Any]], list[str], dict[str, str]]:
        """(the JSON rows of every finished row of the table, the names of rows not run yet,
        {row: why} for rows whose run folders are refused, e.g. trained at a direct lr the
        sweep no longer chooses). Every row of the table counts, not only --rows: a table fills
        up over sittings. A row whose run folders are not here (another clone, another machine)
        keeps its record from ``earlier``, the results file this table wrote before, when that
        is of this budget."""
        rows, missing, refused = [], [], {}
        for row in self.table.rows:
            if not row.runnable:
                rows.append(note_row(row))
                continue
            try:
                record = self.row_result(row)
            except TableError as err:  # out of date: neither its figures nor the earlier file's
                refused[row.name] = str(err)
                continue
            kept = (earlier or {}).get(row.name)
            if record is None and kept is not None and self.still_holds(row, kept):
                record = kept
            if record is None:
                missing.append(row.name)
            else:
                rows.append(record)
        return rows, missing, refused

    def still_holds(self, row: TableRow, kept: dict[str, Any]) -> bool:
        """Whether an earlier results file's record of ``row`` may stand in for its absent run
        folders: of this budget, with results, and trained at the direct lr this machine's
        sweep chose (a retrain after a new choice moves the stale folders away)."""
        if kept.get("budget") != self.options.budget or not kept.get("uhn"):
            return False
        chosen = self.chosen_direct_lr(row)
        return chosen is None or float(chosen["value"]) == float(kept["direct_lr"]["value"])

    def chosen_direct_lr(self, row: TableRow) -> dict[str, Any] | None:
        """The row's direct_lr.json (its sweep's choice), when the table selects the direct lr
        on val and the row has been swept; else None."""
        path = self.row_folder(row) / "direct_lr.json"
        if not (self.options.select_direct_lr and row.direct_lr_grid and path.is_file()):
            return None
        return load_received_json(path, "direct-lr record")

    def row_result(self, row: TableRow) -> dict[str, Any] | None:
        chosen = self.chosen_direct_lr(row)
        chosen_lr = chosen["value"] if chosen is not None else None
        runs = []
        for seed_run in self.seed_runs(row, chosen_lr):
            seed, folder = seed_run.seed, seed_run.folder
            summary = self.finished_summary(folder, seed_run.spec_path, seed_run.overrides, "both")
            if summary is None:
                return None
            run = RunDir(folder)
            extra_path = folder / "reproduce.json"
            extra = load_received_json(extra_path, "reproduce record") if extra_path.is_file() else {}
            info = run.info()
            command = extra.get("command") or train_command(
                self.shown(Path(info["source"])), "both", info.get("data_root"), info.get("overrides", []), folder
            )
            runs.append(
                {
                    "seed": seed,
                    "uhn": summary["uhn"],
                    "direct": summary["direct"],
                    "seconds": summary["phase_seconds"],
                    "command": command,
                    "run_dir": str(folder),
                    "load_average": extra.get("load_average"),
                    "threads": summary.get("threads"),
                    "device": summary.get("device"),
                    "precision": summary.get("precision"),  # auto differs by machine (bf16 or fp32)
                    "cpu": info.get("machine", {}).get("cpu"),
                    "cpu_count": info.get("machine", {}).get("cpu_count"),
                }
            )
        plan = row.budgets[self.options.budget]
        direct_lr: dict[str, Any]
        if chosen is not None:
            direct_lr = {"value": chosen["value"], "how": chosen["how"], "val": chosen["val"]}
            tried = sorted(float(lr) for lr in chosen["val"])
            if chosen["value"] in (tried[0], tried[-1]) and chosen["value"] < MAX_LR:
                # The best val score lay on the edge of what was tried: the search stopped at
                # its limit, or the sweep predates it (the next `uhn reproduce` of the row
                # sweeps on, and retrains the row if the choice moves).
                direct_lr["edge"] = "edge of the lrs tried"
        else:
            config = load_received_yaml(self.row_folder(row) / f"seed_{runs[0]['seed']}" / "config.yaml", "run config")
            train = config["train"]
            direct_lr = {"value": train.get("direct_lr") or train["lr"], "how": row.direct_lr_rule, "val": None}
        return {
            "row": row.name,
            "dataset": row.dataset,
            "model": row.model,
            "metric": row.metric,
            "uhn": figure([r["uhn"] for r in runs]),
            "direct": figure([r["direct"] for r in runs]),
            "paper": row.paper.model_dump(),
            "command": runs[0]["command"],
            "budget": self.options.budget,
            "budget_changes": plan.changes,
            "direct_lr": direct_lr,
            "seconds": {
                "uhn": round(statistics.fmean(r["seconds"].get("uhn", 0.0) for r in runs), 1),
                "direct": round(statistics.fmean(r["seconds"].get("direct", 0.0) for r in runs), 1),
                "total": round(sum(sum(r["seconds"].values()) for r in runs), 1),
            },
            "runs": runs,
        }


@dataclass(frozen=True)
class DirectLr:
    value: float
    chosen: bool  # on the validation split (else the row's rule)
    how: str
    val: dict[str, float | None]  # None: diverged


LrKey = TypeVar("LrKey", str, float)  # an lr as direct_lr.json's keys write it, or as a number

# How many lrs past an edge of a row's direct-lr grid the sweep may try (see past_the_edge).
EDGE_STEPS = 4


def pick_best(scores: dict[LrKey, float], metric: str) -> LrKey:
    """The lr with the best score: the highest accuracy, the lowest RMSE."""
    better = max if metric == "accuracy" else min
    return better(scores, key=lambda lr: scores[lr])


def past_the_edge(grid: list[float], scores: dict[str, float | None], metric: str) -> list[float]:
    """The next lr to try when the best val score so far sits on an edge of the lrs tried
    ([] when it is inside them, or EDGE_STEPS lrs past that edge were tried already): one grid
    step further, by the ratio of the grid's two outermost lrs on that side, never above the
    spec's MAX_LR. A diverged lr (score None) closes its side."""
    valid = {float(lr): score for lr, score in scores.items() if score is not None}
    if len(grid) < 2 or not valid:
        return []
    tried = sorted(float(lr) for lr in scores)
    best = pick_best(valid, metric)
    if best == tried[-1] and sum(lr > grid[-1] for lr in tried) < EDGE_STEPS and best < MAX_LR:
        return [min(MAX_LR, float(f"{best * grid[-1] / grid[-2]:.3g}"))]
    if best == tried[0] and sum(lr < grid[0] for lr in tried) < EDGE_STEPS:
        return [float(f"{best * grid[0] / grid[1]:.3g}")]
    return []


ABSENT = "absent"  # a field one of two specs lacks (a list of layers grew or shrank)


def flat_fields(data: Any, prefix: str = "") -> dict[str, Any]:
    """A JSON-like value as {"dotted.path": scalar}: "layers.0.kind", "train.lr"."""
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


def note_row(row: TableRow) -> dict[str, Any]:
    """A row that cannot run here: listed with its note and the paper's figures, no result."""
    return {
        "row": row.name,
        "dataset": row.dataset,
        "model": row.model,
        "metric": row.metric,
        "uhn": None,
        "direct": None,
        "paper": row.paper.model_dump(),
        "command": None,
        "note": row.note,
    }


def figure(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (None for one seed) and the number of seeds."""
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "std": std, "seeds": len(values)}


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


@dataclass
class Eta:
    """Time left: the rows' estimates, scaled by how the runs so far compared with theirs;
    rows without an estimate count at the mean measured time."""

    pending: list[float | None] = field(default_factory=list)
    measured: list[tuple[float | None, float]] = field(default_factory=list)

    def add(self, estimate: float | None) -> None:
        self.pending.append(estimate)

    def finish(self, seconds: float) -> None:
        if self.pending:
            self.measured.append((self.pending.pop(0), seconds))

    def seconds_left(self) -> float | None:
        if not self.pending:
            return 0.0
        pairs = [(e, s) for e, s in self.measured if e]
        scale = sum(s for _, s in pairs) / sum(e for e, _ in pairs) if pairs else 1.0
        mean = statistics.fmean(s for _, s in self.measured) if self.measured else None
        total = 0.0
        for estimate in self.pending:
            guess = estimate * scale if estimate else mean
            if guess is None:
                return None
            total += guess
        return total

    def line(self) -> str:
        left = self.seconds_left()
        runs = len(self.pending)
        if runs == 0:
            return "no runs left"
        plural = "run" if runs == 1 else "runs"
        if left is None:
            return f"ETA unknown ({runs} {plural} left, no estimate yet)"
        basis = "measured pace" if self.measured else "the table's estimates"
        return f"ETA {format_duration(left)} for {runs} {plural} left ({basis})"


def format_duration(seconds: float) -> str:
    minutes = math.ceil(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


# ---------------------------------------------------------------------------- output


def format_figure(value: dict[str, Any] | None, metric: str) -> str:
    if value is None:
        return "–"
    text = f"{value['mean']:.4f}"
    if value["std"] is not None:
        text += f" ± {value['std']:.4f}"
    return f"{text} ({value['seeds']} seed{'s' if value['seeds'] > 1 else ''})"


def format_paper(paper: dict[str, float | None]) -> str:
    parts = [f"{paper[k]:.4f}" if paper.get(k) is not None else "–" for k in ("uhn", "direct")]
    return " / ".join(parts) if any(paper.get(k) is not None for k in ("uhn", "direct")) else "not given"


def render_markdown(
    table: Table,
    budget: Budget,
    rows: list[dict[str, Any]],
    missing: list[str],
    command: str,
    refused: dict[str, str] | None = None,
) -> str:
    """The table as docs/results.md includes it: one line per finished row, then the rows
    that cannot run or have not run, the budget per row and the command that made it."""
    lines = [
        f"### {table.title}: {budget} budget",
        "",
        f"Made by `{command}`; every figure is the test metric of a run's summary.json (mean ± sample std over seeds).",
        "",
        *machine_lines(rows),
        "| row | metric | UHN | direct | paper UHN / direct | direct lr | seconds per seed (UHN + direct) | command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    notes, changes = [], []
    for record in rows:
        if record["uhn"] is None:
            notes.append(f"* {record['row']}: {record['note']} (paper UHN / direct: {format_paper(record['paper'])})")
            continue
        lr = record["direct_lr"]
        lr_cell = f"{lr['value']:g}" + (" (val)" if lr.get("val") else " (rule)") + (f" ({lr['edge']})" if lr.get("edge") else "")
        seconds = record["seconds"]
        seeds = f" (seeds {', '.join(str(r['seed']) for r in record['runs'])})" if len(record["runs"]) > 1 else ""
        lines.append(
            f"| {record['row']} | {record['metric']} | {format_figure(record['uhn'], record['metric'])} | "
            f"{format_figure(record['direct'], record['metric'])} | {format_paper(record['paper'])} | {lr_cell} | "
            f"{seconds['uhn']:.0f} + {seconds['direct']:.0f} | `{record['command']}`{seeds} |"
        )
        changes.append(f"* {record['row']}: {record['budget_changes']}")
    lines.append("")
    rmse = [r for r in rows if r["metric"] == "rmse" and r["uhn"] is not None]
    if rmse:
        wins = sum(r["uhn"]["mean"] <= r["direct"]["mean"] for r in rmse)
        lines += [f"UHN RMSE at or below direct on {wins} of {len(rmse)} functions run (the paper: 9 of 15).", ""]
    if notes:
        lines += ["Rows without data here:", "", *notes, ""]
    if missing:
        lines += [f"Not run yet ({len(missing)} rows, left out above): {', '.join(missing)}.", ""]
    if refused:
        lines += [f"Out of date ({len(refused)} rows, left out above until retrained):", ""]
        lines += [*(f"* {name}: {why}" for name, why in refused.items()), ""]
    if changes:
        lines += [f"What the {budget} budget changes per row:", "", *changes, ""]
    return "\n".join(lines)


def machine_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Where the runs ran and how busy the machine was: the figures' seconds depend on it."""
    runs = [run for record in rows for run in record.get("runs", [])]
    if not runs:
        return []
    machines = sorted({f"{r['cpu']} ({r['cpu_count']} cores), {r['device']}" for r in runs if r.get("cpu")})
    threads = sorted({r["threads"] for r in runs if r.get("threads") is not None})
    loads = [load for r in runs for load in (r.get("load_average") or []) if load is not None]
    parts = [f"Runs on {'; '.join(machines) or 'an unrecorded machine'}"]
    precisions = sorted({r["precision"] for r in runs if r.get("precision")})
    if precisions:
        parts.append(f"precision {', '.join(precisions)}")
    if threads:
        parts.append(f"{', '.join(map(str, threads))} thread(s) per run")
    if loads:
        parts.append(f"load average {min(loads):.1f}-{max(loads):.1f} at the starts and ends of the runs")
    return ["; ".join(parts) + ".", ""]


def earlier_results(json_path: Path) -> dict[str, dict[str, Any]]:
    """The rows of a results file written before, by row name (none when there is no file)."""
    if not json_path.is_file():
        return {}
    try:
        rows = load_received_json(json_path, "results file")
    except ReceivedFileError as err:
        raise TableError(
            f"{json_path}: not a results file this command wrote ({err}); move it away to start afresh"
        ) from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "row" in r for r in rows):
        raise TableError(f"{json_path}: not a results file this command wrote (a list of rows); move it away to start afresh")
    return {r["row"]: r for r in rows}


def results_paths(results_dir: Path, table: Table, budget: Budget) -> tuple[Path, Path]:
    stem = f"{table.name}_{budget}"
    return results_dir / f"{stem}.json", results_dir / f"{stem}.md"


def write_results(
    harness: Harness, results_dir: Path, command: str, say: Callable[[str], None] | None = None
) -> tuple[Path, Path, list[str]]:
    """Write ``<table>_<budget>.json`` and ``.md`` under ``results_dir``; the rows left out (not
    run yet, or out of date). Rows finished in an earlier sitting whose run folders are gone
    stay, from the file itself."""
    json_path, md_path = results_paths(results_dir, harness.table, harness.options.budget)
    rows, missing, refused = harness.results(earlier_results(json_path))
    atomic_write_text(json_path, json.dumps(rows, indent=2) + "\n")
    markdown = render_markdown(harness.table, harness.options.budget, rows, missing, command, refused)
    atomic_write_text(md_path, markdown + "\n")
    if say is not None:
        finished = sum(r["uhn"] is not None for r in rows)
        say(f"wrote {json_path} and {md_path}: {finished} rows with results, {len(missing)} rows missing"
            + (f" ({', '.join(missing)})" if missing else "")
            + (f", {len(refused)} out of date ({', '.join(refused)})" if refused else ""))
    return json_path, md_path, [*missing, *refused]
