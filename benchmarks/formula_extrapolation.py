"""How much of a formula run's test RMSE comes from test points beyond the training targets.

    python benchmarks/formula_extrapolation.py runs/reproduce/table1/cpu/kan_kv/seed_21962 [--json]

The formula tasks draw 1,000 training and 1,000 test points from the same box
(uhn_runtime/data/formula.py). Functions that blow up at an edge of the box (kv and yv as
z -> 0.1) put a few test targets above every training target; a KAN's splines must
extrapolate there, and those few points can dominate an RMSE whose other 990-odd points
agree with the validation split. This reports, for each finished phase (uhn, direct) of a
run, the test RMSE over all points, over the points inside the training targets' range,
and over the points outside it, with the worst points.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from uhn_runtime.data import load_task_data
from uhn_runtime.io.export import load_trained_source
from uhn_runtime.train.evaluate import generate_weights
from uhn_runtime.train.run_dir import RunDir


def rmse(error: torch.Tensor) -> float | None:
    return float(error.pow(2).mean().sqrt()) if error.numel() else None


def phase_report(
    run: RunDir, kind: str, inputs: torch.Tensor, targets: torch.Tensor, inside: torch.Tensor
) -> dict[str, Any]:
    source, target, precision = load_trained_source(run, kind, torch.device("cpu"))  # type: ignore[arg-type]
    flat = generate_weights(source, precision, target)
    target.model.eval()
    with torch.no_grad():
        error = target.forward(flat, x=inputs) - targets
    worst = error.abs().amax(dim=1).argsort(descending=True)[:5]
    return {
        "precision": precision.name,
        "test_rmse": rmse(error),
        "inside_rmse": rmse(error[inside]),
        "outside_rmse": rmse(error[~inside]),
        "worst": [{"target": targets[i].tolist(), "error": error[i].tolist()} for i in worst.tolist()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished formula (KAN) run folder")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run = RunDir.open(args.run)
    task = run.plan().trained_target.spec.task
    data = load_task_data(task, run.info().get("data_root"))
    train_targets = data.splits["train"][1]
    inputs, targets = data.splits["test"]
    low, high = train_targets.amin(dim=0), train_targets.amax(dim=0)
    inside = ((targets >= low) & (targets <= high)).all(dim=1)
    report: dict[str, Any] = {
        "run": str(args.run),
        "function": task.dataset,
        "test_points": len(targets),
        "outside_training_targets": int((~inside).sum()),
    }
    for kind in ("uhn", "direct"):
        if run.checkpoint_path(kind).is_file():
            report[kind] = phase_report(run, kind, inputs, targets, inside)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"{report['function']}: {report['outside_training_targets']} of "
        f"{report['test_points']} test targets lie outside the training targets' range"
    )
    for kind in ("uhn", "direct"):
        if kind in report:
            r = report[kind]
            print(
                f"{kind:6s} test RMSE {r['test_rmse']:.4f}  inside "
                f"{r['inside_rmse']:.4f}  outside {r['outside_rmse'] or float('nan'):.4f}"
            )


if __name__ == "__main__":
    main()
