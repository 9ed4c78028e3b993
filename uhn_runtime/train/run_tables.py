"""Which targets a run trains and reports, and the tables of them it prints at its end (and
``uhn evaluate`` prints again): per model of a family (also written as models.csv) and per task
of a multi-task run."""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path
from typing import Any

from uhn_spec.files import atomic_write
from uhn_spec.plan import Plan

from .run_dir import RunDir

MODELS_FILE = "models.csv"  # a family run's per-model test metrics, in the run folder


def trained_positions(plan: Plan) -> list[int]:
    """Positions of the targets a run trains and reports: all of them, except that the
    generated generators of a recursive plan are part of its weight source (only the leaf
    at the chain's end is a target of the run)."""
    if plan.recursion_depth:
        return [len(plan.targets) - 1]
    return list(range(len(plan.targets)))


def seen_positions(plan: Plan) -> list[int]:
    """The trained targets that training draws from (a family's seen members)."""
    return [i for i in trained_positions(plan) if plan.targets[i].split == "seen"]


def evaluated_targets(plan: Plan) -> list[int]:
    """Positions of the targets a run reports: the first ``plan.evaluated_seen`` seen ones
    (all of them when None) and every unseen one, in plan order."""
    seen = seen_positions(plan)
    unseen = [i for i in trained_positions(plan) if plan.targets[i].split == "unseen"]
    limit = len(seen) if plan.evaluated_seen is None else plan.evaluated_seen
    return seen[:limit] + unseen


def is_multi_model(plan: Plan) -> bool:
    return len(trained_positions(plan)) > 1


def group_stats(values: list[float]) -> dict[str, Any]:
    """``{"mean", "std", "models"}`` of one group's test metrics; std is the population
    standard deviation (0 for one model); mean and std are None for an empty group."""
    if not values:
        return {"mean": None, "std": None, "models": 0}
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values), "models": len(values)}


def split_groups(plan: Plan, models: dict[str, float]) -> dict[str, dict[str, Any]]:
    split = {t.name: t.split for t in plan.targets}
    return {
        group: group_stats([value for name, value in models.items() if split[name] == group])
        for group in ("seen", "unseen")
    }


def write_models_table(run: RunDir, plan: Plan, models: dict[str, float], metric: str) -> Path:
    """``models.csv`` in the run folder: name, split, num_params and the test metric of
    every evaluated model (seen ones first, in plan order), written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", "split", "num_params", f"test_{metric}"])
    for name, value in models.items():
        target = plan.target(name)
        writer.writerow([name, target.split, target.num_params, f"{value:.6f}"])
    path = run.root / MODELS_FILE
    atomic_write(path, lambda tmp: tmp.write_text(buffer.getvalue()))
    return path


def models_table_lines(plan: Plan, models: dict[str, float], metric: str) -> list[str]:
    """The per-model table and the group lines a family run prints at the end."""
    lines = [f"{'model':<32} {'split':<7} {'params':>10}  test {metric}"]
    for name, value in models.items():
        target = plan.target(name)
        lines.append(f"{name:<32} {target.split:<7} {target.num_params:>10,}  {value:.4f}")
    for group, stats in split_groups(plan, models).items():
        if stats["models"]:
            lines.append(f"{group}: mean {stats['mean']:.4f}  std {stats['std']:.4f}  ({stats['models']} models)")
    return lines


def task_table_lines(plan: Plan, tasks: dict[str, dict[str, Any]]) -> list[str]:
    """The per-task table a multi-task run prints at the end."""
    lines = [f"{'task':<28} {'dataset':<12} {'p':>6} {'params':>10}  {'metric':<8} test"]
    for name, row in tasks.items():
        target = plan.target(name)
        lines.append(
            f"{name:<28} {target.spec.task.dataset:<12} {target.probability or 0:>6.3f} "
            f"{target.num_params:>10,}  {row['metric']:<8} {row['uhn']:.4f}"
        )
    return lines
