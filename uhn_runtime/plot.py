"""`uhn plot`: a run's curves (loss, learning rate, test metric) as one PNG from metrics.jsonl.

matplotlib is optional (``pip install 'uhn[plot]'``) and drawn with the Agg backend, so
plotting works without a display. One panel per quantity, one line per phase (uhn, direct).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from uhn_spec.errors import UHNError
from uhn_spec.files import atomic_write

from .run_dir import RunDir

INSTALL_HINT = "pip install 'uhn[plot]'"
Curve = tuple[list[float], list[float]]


def read_metrics(run: RunDir) -> list[dict[str, Any]]:
    """The run's records; a last line cut short by a kill is left out."""
    if not run.metrics_path.is_file():
        raise UHNError(f"{run.metrics_path}: no metrics yet; the run has not logged an epoch or step")
    records = []
    lines = run.metrics_path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise UHNError(f"{run.metrics_path}: line {number}: not a JSON record") from None
    return records


def curves(records: list[dict[str, Any]]) -> tuple[str, dict[str, dict[str, Curve]]]:
    """The run's x-axis unit and, per panel (loss, lr, metric), one (x, y) curve per phase."""
    panels: dict[str, dict[str, Curve]] = defaultdict(dict)
    unit = "epoch" if any("epoch" in r for r in records if r.get("event") == "train") else "step"
    metric = next((k[len("test_") :] for r in records for k in r if k.startswith("test_")), None)

    def add(panel: str, phase: str, x: float, y: float) -> None:
        xs, ys = panels[panel].setdefault(phase, ([], []))
        xs.append(x)
        ys.append(y)

    for r in records:
        phase, x = r.get("phase", "?"), r.get(unit)
        if x is None:
            continue
        if r.get("event") == "train":
            add("loss", phase, x, r["loss"])
            add("lr", phase, x, r["lr"])
            for key, value in r.items():
                if key.startswith("test_"):
                    add(key[len("test_") :], phase, x, value)
        elif r.get("event") == "eval" and r.get("final"):
            for key in ("accuracy", "rmse"):
                if key in r:
                    metric = key
                    add(key, phase, x, r[key])
    order = ["loss", "lr"] + ([metric] if metric in panels else [])
    return unit, {name: panels[name] for name in order if name in panels}


def plot_run(run_root: Path, output: Path) -> Path:
    """Write the run's curves to ``output`` (PNG) and return it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UHNError(f"uhn plot needs matplotlib; install it with {INSTALL_HINT}") from None
    run = RunDir.open(run_root)
    unit, panels = curves(read_metrics(run))
    if not panels:
        raise UHNError(f"{run.metrics_path}: no training records yet to plot")
    figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    for axis, (name, by_phase) in zip(axes[0], panels.items()):
        for phase, (xs, ys) in by_phase.items():
            axis.plot(xs, ys, marker="o" if len(xs) < 3 else None, label=phase)
        axis.set_title("test " + name if name not in ("loss", "lr") else name)
        axis.set_xlabel(unit)
        if name == "loss" and all(y > 0 for _, ys in by_phase.values() for y in ys):
            axis.set_yscale("log")
        axis.legend()
    figure.suptitle(str(run.root))
    figure.tight_layout()
    try:
        atomic_write(output, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(figure)
    return output
