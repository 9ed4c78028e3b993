"""The direct baseline's learning rate of a row, chosen on a validation split, never on the
test split: for each lr of the row's grid, a `--mode direct` run of the same budget with
``task.validate_split=true`` (the loaders hold out a seeded part of the training data; Planetoid
graphs have their public validation nodes) under the first seed of the row's budget (whatever
``--seeds`` asks, so a row's seeds split over sittings or processes share one choice), scored on
``val``; the best lr then trains every seed. While the best lies on an edge of what was tried,
the sweep goes one grid step past it. The choice is kept in ``<row folder>/direct_lr.json`` so a
resumed table does not sweep again."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from uhn_runtime.data import load_task_data
from uhn_runtime.device import resolve_device
from uhn_runtime.io.export import load_trained_source
from uhn_runtime.train.evaluate import evaluate_source
from uhn_runtime.train.optim import TrainingDiverged
from uhn_runtime.train.run_dir import RunDir
from uhn_spec.files import atomic_write_text
from uhn_spec.metrics import METRICS
from uhn_spec.received import load_received_json
from uhn_spec.spec import MAX_LR

from .runs import TableRuns, lr_text, train_command
from .tables import TableError, TableRow


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
    """The lr with the best score in ``metric`` (the highest accuracy, the lowest RMSE)."""
    return METRICS[metric].best(scores)


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


class LrSweep:
    """The direct lr of each row of ``runs``' table, swept in its run folders."""

    def __init__(self, runs: TableRuns):
        self.runs = runs

    def direct_lr(self, row: TableRow) -> DirectLr:
        """The direct baseline's learning rate of ``row``: chosen on val, or the row's rule."""
        if not self.runs.options.select_direct_lr or not row.direct_lr_grid:
            reason = "--no-select-direct-lr" if row.direct_lr_grid else "the row has no grid"
            spec = self.runs.load_spec(self.runs.spec_path(row), row.budgets[self.runs.options.budget].set)
            return DirectLr(spec.train.direct_lr or spec.train.lr, False, f"{row.direct_lr_rule} ({reason})", {})
        saved = self.current_choice(row)
        if saved is not None:
            return DirectLr(float(saved["value"]), True, saved["how"], saved["val"])
        return self.sweep_direct_lr(row, self.sweep_seed(row), self.runs.row_folder(row) / "direct_lr.json")

    def current_choice(self, row: TableRow) -> dict[str, Any] | None:
        """The row's direct_lr.json when its sweep is the one the table runs now (grid, seed and
        protocol); else None: the row sweeps (again), reading back the lrs trained before."""
        saved = self.chosen_direct_lr(row)
        if saved is None:
            return None
        same_sweep = (
            sorted(map(float, saved.get("grid", []))) == sorted(row.direct_lr_grid)
            and saved.get("seed") == self.sweep_seed(row)
            and saved.get("edge_steps") == EDGE_STEPS
        )
        return saved if same_sweep else None

    def sweep_seed(self, row: TableRow) -> int:
        """The seed the row's lr sweep trains under: its budget's first (not ``--seeds``')."""
        return row.budgets[self.runs.options.budget].seeds[0]

    def sweep_runs_left(self, row: TableRow) -> int:
        """The `--mode direct` runs of the row's grid its lr sweep has still to train (steps past
        an edge of the grid may add more)."""
        if not (self.runs.options.select_direct_lr and row.direct_lr_grid) or self.current_choice(row) is not None:
            return 0
        return sum(RunDir(self.sweep_folder(row, lr)).summary() is None for lr in row.direct_lr_grid)

    def sweep_folder(self, row: TableRow, lr: float) -> Path:
        return self.runs.row_folder(row) / "direct_lr" / f"lr_{lr_text(lr)}"

    def sweep_direct_lr(self, row: TableRow, seed: int, path: Path) -> DirectLr:
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
            raise TableError(
                f"{row.name}: the direct baseline diverged at every lr tried ({', '.join(scores)}); "
                "give the row a lower direct_lr_grid"
            )
        best = pick_best(valid, row.metric)
        how = (
            f"chosen from {', '.join(sorted(scores, key=float))} by val {row.metric} "
            "(task.validate_split: the training data less a seeded held-out part; Planetoid: its public val nodes), "
            f"seed {seed}, same budget"
        )
        record = {
            "value": float(best), "how": how, "val": scores, "seed": seed, "grid": row.direct_lr_grid,
            "edge_steps": EDGE_STEPS,
        }  # fmt: skip
        atomic_write_text(path, json.dumps(record, indent=2) + "\n")
        self.runs.say(f"{row.name}: direct lr {best} (val {row.metric} {valid[best]:.4f})")
        return DirectLr(float(best), True, how, scores)

    def score_direct_lr(self, row: TableRow, seed: int, lr: float) -> float | None:
        """The val metric of a `--mode direct` run of the row's budget at ``lr``; None if it diverged."""
        plan = row.budgets[self.runs.options.budget]
        spec_path = self.runs.spec_path(row)
        folder = self.sweep_folder(row, lr)
        overrides = [*plan.set, f"train.seed={seed}", "task.validate_split=true", f"train.direct_lr={lr_text(lr)}"]
        command = train_command(self.runs.shown(spec_path), "direct", self.runs.options.data_root, overrides, folder)
        self.runs.say(f"{row.name}: direct lr {lr_text(lr)} on the validation split: {command}")
        try:
            self.runs.train_folder(spec_path, overrides, folder, "direct")
        except TrainingDiverged as err:  # past an edge, a too-high lr is an answer, not a failure
            self.runs.say(f"{row.name}: direct lr {lr_text(lr)}: diverged ({err})")
            return None
        device = resolve_device(self.runs.options.device)
        source, target, precision = load_trained_source(RunDir(folder), "direct", device)
        data = load_task_data(target.plan.spec.task, self.runs.options.data_root)
        score = evaluate_source(source, target, data, "val", precision)
        self.runs.say(f"{row.name}: direct lr {lr_text(lr)}: val {row.metric} {score:.4f}")
        return score

    def chosen_direct_lr(self, row: TableRow) -> dict[str, Any] | None:
        """The row's direct_lr.json (its sweep's choice), when the table selects the direct lr
        on val and the row has been swept; else None."""
        path = self.runs.row_folder(row) / "direct_lr.json"
        if not (self.runs.options.select_direct_lr and row.direct_lr_grid and path.is_file()):
            return None
        return load_received_json(path, "direct-lr record")
