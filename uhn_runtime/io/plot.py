"""`uhn plot`: a run's curves (loss, learning rate, test metric) as one PNG from metrics.jsonl.

matplotlib is optional (``pip install 'uhn[plot]'``) and drawn with the Agg backend, so
plotting works without a display. One panel per quantity, one line per phase (uhn, direct).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from uhn_spec.errors import UHNError
from uhn_spec.files import atomic_write
from uhn_spec.metrics import METRICS
from uhn_spec.received import MAX_METRICS_BYTES, ReceivedFileError, parse_received_json, read_received_text

from ..train.run_dir import RunDir

INSTALL_HINT = "pip install 'uhn[plot]'"
Curve = tuple[list[float], list[float]]


def read_metrics(run: RunDir) -> list[dict[str, Any]]:
    """The run's records (read within MAX_METRICS_BYTES); a last line cut short by a kill is
    left out, any other line that is not a record of numbers is one line naming it."""
    path = run.metrics_path
    if not path.is_file():
        raise UHNError(f"{path}: no metrics yet; the run has not logged an epoch or step")
    records = []
    lines = read_received_text(path, MAX_METRICS_BYTES, "metrics file").splitlines()
    for number, line in enumerate(lines, 1):
        where = f"{path}: line {number}"
        try:
            record = parse_received_json(line, where)
        except ReceivedFileError:
            if number < len(lines):
                raise UHNError(f"{where}: not a JSON record") from None
            continue
        records.append(checked_record(record, where))
    return records


def checked_record(record: Any, where: str) -> dict[str, Any]:
    """A metrics record whose fields the curves read are numbers (an edited file names the line)."""
    if not isinstance(record, dict):
        raise UHNError(f"{where}: a JSON {type(record).__name__}, not a record")
    needed = ("loss", "lr") if record.get("event") == "train" else ()
    for key in (*needed, "epoch", "step", *METRICS, *(k for k in record if str(k).startswith("test_"))):
        value = record.get(key)
        if (key in needed or value is not None) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise UHNError(f"{where}: {key}: {value!r} is not a number")
    return record


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
            for key in METRICS:
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
