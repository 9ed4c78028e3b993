"""``uhn plot``: a run's loss, learning-rate and test-metric curves as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import command
from .options import nonempty_path

DEFAULT_NAME = "curves.png"


@command("plot")
def plot(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (finished or not).", show_default=False)],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            parser=nonempty_path,
            metavar="PNG",
            help=f"PNG to write (default: RUN/{DEFAULT_NAME}).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Plot a run's loss, learning rate and test metric (from metrics.jsonl) to a PNG; needs uhn[plot]."""
    from uhn_runtime.io.plot import plot_run

    written = plot_run(run_dir, output if output is not None else run_dir / DEFAULT_NAME)
    typer.echo(f"wrote {written}")
