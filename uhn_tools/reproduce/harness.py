"""`uhn reproduce`: rerun a table of the paper as ordinary `uhn train --mode both` runs.

Each row x seed is one run folder ``OUT/<table>/<budget>/<row>/seed_<seed>`` trained in-process
exactly as ``uhn train SPEC --mode both --set ... -o FOLDER`` would (``runs.py``), after the
row's direct lr was chosen on a validation split (``sweep.py``); ``results.py`` reads every
finished row back into the results files."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from uhn_runtime.train.run_dir import RunDir
from uhn_spec.files import atomic_write_text

from .report import Eta
from .runs import ReproduceOptions, SeedRun, TableRuns
from .sweep import DirectLr, LrSweep
from .tables import Table, TableRow


class Harness(TableRuns):
    """Runs one table at one budget; ``run()`` trains what is missing (``results.py`` reads
    every finished row back)."""

    def __init__(self, table: Table, spec_root: Path, options: ReproduceOptions):
        super().__init__(table, spec_root, options)
        self.sweep = LrSweep(self)

    def direct_lr(self, row: TableRow) -> DirectLr:
        return self.sweep.direct_lr(row)

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
        sweeps = sum(self.sweep.sweep_runs_left(row) for row in runnable)
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
                    f"[{done}/{total}] {row.name} seed {run.seed}: "
                    f"uhn {summary['uhn']:.4f}  direct {summary['direct']:.4f} "
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


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None
