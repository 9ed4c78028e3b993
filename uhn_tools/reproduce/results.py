"""A table's results: the JSON rows of every row whose seeds have all finished -- in this
sitting or an earlier one -- and the markdown table of them; rows not run yet are left out and
counted, never filled in. A row whose run folders are not on this machine (a fresh clone)
keeps its record from the results file written before, so the table fills up over sittings."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from uhn_runtime.train.run_dir import RunDir
from uhn_spec.files import atomic_write_text
from uhn_spec.received import ReceivedFileError, load_received_json, load_received_yaml
from uhn_spec.spec import MAX_LR

from .harness import Harness
from .report import render_markdown
from .runs import train_command
from .tables import Budget, Table, TableError, TableRow


def table_results(
    harness: Harness, earlier: dict[str, dict[str, Any]] | None = None
) -> tuple[list[dict[str, Any]], list[str], dict[str, str]]:
    """(the JSON rows of every finished row of the table, the names of rows not run yet,
    {row: why} for rows whose run folders are refused, e.g. trained at a direct lr the
    sweep no longer chooses). Every row of the table counts, not only --rows: a table fills
    up over sittings. A row whose run folders are not here (another clone, another machine)
    keeps its record from ``earlier``, the results file this table wrote before, when that
    is of this budget."""
    rows, missing, refused = [], [], {}
    for row in harness.table.rows:
        if not row.runnable:
            rows.append(note_row(row))
            continue
        try:
            record = row_result(harness, row)
        except TableError as err:  # out of date: neither its figures nor the earlier file's
            refused[row.name] = str(err)
            continue
        kept = (earlier or {}).get(row.name)
        if record is None and kept is not None and still_holds(harness, row, kept):
            record = kept
        if record is None:
            missing.append(row.name)
        else:
            rows.append(record)
    return rows, missing, refused


def still_holds(harness: Harness, row: TableRow, kept: dict[str, Any]) -> bool:
    """Whether an earlier results file's record of ``row`` may stand in for its absent run
    folders: of this budget, with results, and trained at the direct lr this machine's
    sweep chose (a retrain after a new choice moves the stale folders away)."""
    if kept.get("budget") != harness.options.budget or not kept.get("uhn"):
        return False
    chosen = harness.sweep.chosen_direct_lr(row)
    return chosen is None or float(chosen["value"]) == float(kept["direct_lr"]["value"])


def row_result(harness: Harness, row: TableRow) -> dict[str, Any] | None:
    chosen = harness.sweep.chosen_direct_lr(row)
    chosen_lr = chosen["value"] if chosen is not None else None
    runs = []
    for seed_run in harness.seed_runs(row, chosen_lr):
        seed, folder = seed_run.seed, seed_run.folder
        summary = harness.finished_summary(folder, seed_run.spec_path, seed_run.overrides, "both")
        if summary is None:
            return None
        run = RunDir(folder)
        extra_path = folder / "reproduce.json"
        extra = load_received_json(extra_path, "reproduce record") if extra_path.is_file() else {}
        info = run.info()
        command = extra.get("command") or train_command(
            harness.shown(Path(info["source"])), "both", info.get("data_root"), info.get("overrides", []), folder
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
    plan = row.budgets[harness.options.budget]
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
        config = load_received_yaml(harness.row_folder(row) / f"seed_{runs[0]['seed']}" / "config.yaml", "run config")
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
        "budget": harness.options.budget,
        "budget_changes": plan.changes,
        "direct_lr": direct_lr,
        "seconds": {
            "uhn": round(statistics.fmean(r["seconds"].get("uhn", 0.0) for r in runs), 1),
            "direct": round(statistics.fmean(r["seconds"].get("direct", 0.0) for r in runs), 1),
            "total": round(sum(sum(r["seconds"].values()) for r in runs), 1),
        },
        "runs": runs,
    }


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
        raise TableError(
            f"{json_path}: not a results file this command wrote (a list of rows); move it away to start afresh"
        )
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
    rows, missing, refused = table_results(harness, earlier_results(json_path))
    atomic_write_text(json_path, json.dumps(rows, indent=2) + "\n")
    markdown = render_markdown(harness.table, harness.options.budget, rows, missing, command, refused)
    atomic_write_text(md_path, markdown + "\n")
    if say is not None:
        finished = sum(r["uhn"] is not None for r in rows)
        say(
            f"wrote {json_path} and {md_path}: {finished} rows with results, {len(missing)} rows missing"
            + (f" ({', '.join(missing)})" if missing else "")
            + (f", {len(refused)} out of date ({', '.join(refused)})" if refused else "")
        )
    return json_path, md_path, [*missing, *refused]
