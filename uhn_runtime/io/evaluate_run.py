"""``uhn evaluate``: the test metric of a run's trained weight sources (each evaluated member
of a family or multi-task run, with the table the run printed) or of an exported model."""

from __future__ import annotations

from pathlib import Path

import torch

from uhn_spec.errors import UHNError

from ..data import TaskData, load_task_data
from ..model.target import DeviceTarget
from ..model.weights import SourceKind
from ..train.evaluate import evaluate_module, evaluate_source
from ..train.run_dir import RunDir
from ..train.run_tables import evaluated_targets, is_multi_model, models_table_lines, task_table_lines
from .export import load_exported, load_trained_source


def evaluation_lines(path: Path, data_root: str | None, device: torch.device) -> list[str]:
    """What ``uhn evaluate PATH`` prints: one line per weight source of a run folder, a
    family's or multi-task run's table, or an exported model's one line."""
    if not path.is_dir():
        spec, model = load_exported(path, device)
        data = load_task_data(spec.task, data_root)
        return [f"{path}: test {data.metric} {evaluate_module(model, data, 'test', device):.4f}"]
    run = RunDir.open(path)
    kinds: list[SourceKind] = [k for k in ("uhn", "direct") if run.checkpoint_path(k).is_file()]
    if not kinds:
        raise UHNError(f"{path}: no checkpoints yet; train with `uhn train SPEC --out {path}`")
    root = data_root or run.info().get("data_root")
    if is_multi_model(run.plan()):
        return member_lines(run, root, device)
    lines, loaded = [], None
    for kind in kinds:
        weights, target, precision = load_trained_source(run, kind, device)
        loaded = loaded or load_task_data(target.plan.spec.task, root)
        lines.append(f"{kind}: test {loaded.metric} {evaluate_source(weights, target, loaded, 'test', precision):.4f}")
    return lines


def member_lines(run: RunDir, data_root: str | None, device: torch.device) -> list[str]:
    """Every evaluated member of a family (or multi-task) run, as the run reported them."""
    plan = run.plan()
    weights, _, precision = load_trained_source(run, "uhn", device)
    models: dict[str, float] = {}
    data: dict[str, TaskData] = {}
    for index in evaluated_targets(plan):
        target = DeviceTarget(plan.targets[index], device)
        data[target.plan.name] = load_task_data(target.plan.spec.task, data_root)  # a multi-task run: each its own
        models[target.plan.name] = evaluate_source(weights, target, data[target.plan.name], "test", precision)
    metrics = {name: d.metric for name, d in data.items()}
    if len(set(metrics.values())) > 1 or plan.mode == "multitask":
        return task_table_lines(plan, {name: {"metric": metrics[name], "uhn": v} for name, v in models.items()})
    return models_table_lines(plan, models, next(iter(metrics.values())))
