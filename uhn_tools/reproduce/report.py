"""What `uhn reproduce` shows: the ETA over the runs left, and a table's results as the
markdown table docs/results.md includes."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from uhn_spec.metrics import RMSE

from .tables import Budget, Table


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
        lr_cell = f"{lr['value']:g}" + (" (val)" if lr.get("val") else " (rule)")
        lr_cell += f" ({lr['edge']})" if lr.get("edge") else ""
        seconds = record["seconds"]
        seeds = f" (seeds {', '.join(str(r['seed']) for r in record['runs'])})" if len(record["runs"]) > 1 else ""
        lines.append(
            f"| {record['row']} | {record['metric']} | {format_figure(record['uhn'], record['metric'])} | "
            f"{format_figure(record['direct'], record['metric'])} | {format_paper(record['paper'])} | {lr_cell} | "
            f"{seconds['uhn']:.0f} + {seconds['direct']:.0f} | `{record['command']}`{seeds} |"
        )
        changes.append(f"* {record['row']}: {record['budget_changes']}")
    lines.append("")
    rmse = [r for r in rows if r["metric"] == RMSE.name and r["uhn"] is not None]
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
