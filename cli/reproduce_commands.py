"""``uhn reproduce``: rerun a table of the paper (UHN beside direct) and write its results."""

from __future__ import annotations

import shlex
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from uhn_runtime.cpu_policy import choose_threads
from uhn_runtime.train.stop_signals import RunStopped

from .app import command
from .options import DEFAULT_DEVICE, DataRootOption, DeviceOption, parse_int_list, parse_name_list

DEFAULT_OUT = Path("runs/reproduce")
# Where the results files are written, relative to the working directory (the interface
# names benchmarks/results/TABLE_BUDGET.json); nothing is read or imported from there.
DEFAULT_RESULTS = Path("benchmarks/results")


class BudgetChoice(StrEnum):
    """cpu: a documented smaller schedule per row; paper: the paper's schedules and seeds."""

    cpu = "cpu"
    paper = "paper"


# --seeds: each one a torch and numpy seed (32 bits); more seeds than this are not a table.
MAX_SEED = 2**32 - 1
MAX_SEEDS = 100


def parse_seeds(text: str | None) -> tuple[int, ...] | None:
    """--seeds as distinct integers in [0, MAX_SEED] (None: the budget's own seeds)."""
    if text is None:
        return None
    return parse_int_list(text, "--seeds", 0, MAX_SEED, MAX_SEEDS, "21962,59358", distinct=True)


@command("reproduce")
def reproduce(
    table: Annotated[
        str, typer.Argument(help="table1, table2, demo (the digits MLP), or a table YAML file.", show_default=False)
    ],
    budget: Annotated[
        BudgetChoice, typer.Option("--budget", help="cpu: smaller schedules per row; paper: the paper's.")
    ] = BudgetChoice.cpu,
    rows: Annotated[
        str | None,
        typer.Option("--rows", help="Comma-separated row names to train (default: all).", show_default=False),
    ] = None,
    seeds: Annotated[
        str | None,
        typer.Option(
            "--seeds",
            help="Comma-separated seeds for every row (default: "
            f"the budget's seeds per row); 1 to {MAX_SEEDS} distinct "
            f"integers from 0 to {MAX_SEED}.",
            show_default=False,
        ),
    ] = None,
    data_root: DataRootOption = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder of the run folders (OUT/TABLE/BUDGET/ROW/seed_S).")
    ] = DEFAULT_OUT,
    results: Annotated[Path, typer.Option("--results", help="Folder for TABLE_BUDGET.json and .md.")] = DEFAULT_RESULTS,
    select_direct_lr: Annotated[
        bool,
        typer.Option(
            "--select-direct-lr/--no-select-direct-lr",
            help="Choose each row's direct lr from its grid on a validation split (else the row's rule).",
        ),
    ] = True,
    specs_root: Annotated[
        Path | None,
        typer.Option(
            "--specs-root",
            help="Folder the table's spec paths are relative to (default: the current folder for a built-in table, "
            "whose paths name a uhn checkout's specs/; a table file's own folder).",
            show_default=False,
        ),
    ] = None,
    device: DeviceOption = DEFAULT_DEVICE,
) -> None:
    """Train every row of a table as `uhn train --mode both` runs (resumable), then write the
    results as JSON and a markdown table. Rows not run yet are left out and counted."""
    from uhn_tools.reproduce import Harness, ReproduceOptions, load_table, write_results

    chosen_rows = None if rows is None else parse_name_list(rows, "--rows")
    chosen_seeds = parse_seeds(seeds)
    loaded, spec_root = load_table(table)
    options = ReproduceOptions(
        budget=budget.value,
        out=out,
        data_root=data_root,
        rows=chosen_rows,
        seeds=chosen_seeds,
        select_direct_lr=select_direct_lr,
        device=device.value,
        spec_root=specs_root,
    )
    harness = Harness(loaded, spec_root, options)
    typer.echo(choose_threads().line(), err=True)
    again = table_command(table, budget.value, data_root, seeds, out, select_direct_lr, specs_root)
    try:
        harness.run()
    except RunStopped as stopped:
        write_results(harness, results, again, harness.say)
        resume = continue_command(again, rows, results, device.value)
        typer.echo(f"{stopped}; continue with `{resume}`", err=True)
        raise typer.Exit(stopped.exit_code) from None
    write_results(harness, results, again, harness.say)


def table_command(
    table: str, budget: str, data_root: str | None, seeds: str | None, out: Path, select: bool, specs_root: Path | None
) -> str:
    """The command that reruns (and resumes) the whole table: what its markdown cites."""
    words = ["uhn", "reproduce", table, "--budget", budget]
    if data_root:
        words += ["--data-root", data_root]
    if seeds:
        words += ["--seeds", seeds]
    if out != DEFAULT_OUT:
        words += ["--out", str(out)]
    if not select:
        words.append("--no-select-direct-lr")
    if specs_root is not None:
        words += ["--specs-root", str(specs_root)]
    return shlex.join(words)


def continue_command(table_line: str, rows: str | None, results: Path, device: str) -> str:
    """``table_line`` (the table's command) narrowed to what this sitting was asked: its rows,
    results folder and device, so continuing a stopped sitting trains nothing else."""
    words = shlex.split(table_line)
    if rows:
        words += ["--rows", rows]
    if results != DEFAULT_RESULTS:
        words += ["--results", str(results)]
    if device != DEFAULT_DEVICE.value:
        words += ["--device", device]
    return shlex.join(words)
