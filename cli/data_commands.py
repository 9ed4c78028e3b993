"""Data commands: ``uhn data fetch NAME`` and ``uhn data info NAME``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from uhn_runtime.data import Batch, TaskData

from .app import app, reports_errors

data_app = typer.Typer(name="data", help="Fetch datasets and check what a data root holds.", no_args_is_help=True)
app.add_typer(data_app, name="data")

NameArgument = Annotated[str, typer.Argument(help="Dataset name, e.g. mnist, cora, imdb, kv.", show_default=False)]
DataRootOption = Annotated[
    str | None,
    typer.Option("--data-root", help="Folder with the datasets (default: $UHN_DATA, else ~/.cache/uhn/data)."),
]
COUNT_BATCH = 4096


def _known(name: str) -> None:
    from uhn_runtime.data import DataError
    from uhn_spec.tasks import DATASETS

    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")


@data_app.command("fetch")
@reports_errors
def fetch_command(name: NameArgument, data_root: DataRootOption = None) -> None:
    """Download a dataset's official files into the data root (checksums verified)."""
    from uhn_runtime.data import resolve_data_root
    from uhn_runtime.data.fetch import fetch
    from uhn_runtime.data.files import SOURCES

    _known(name)
    if name not in SOURCES:
        typer.echo(f"{name}: nothing to download (generated or bundled data)")
        return
    root = resolve_data_root(data_root)
    fetch(name, root, log=typer.echo)
    typer.echo(f"{name}: ready under {root}")


@data_app.command("info")
@reports_errors
def info_command(
    name: NameArgument,
    data_root: DataRootOption = None,
    load: Annotated[bool, typer.Option("--load/--no-load", help="Load the data and count its splits.")] = True,
) -> None:
    """What a dataset is, where its files are expected, and (loading it) its split sizes."""
    from uhn_runtime.data import load_task_data, resolve_data_root
    from uhn_runtime.data.files import SOURCES
    from uhn_spec.spec import TaskSpec
    from uhn_spec.tasks import DATASETS

    _known(name)
    info = DATASETS[name]
    root = resolve_data_root(data_root)
    typer.echo(
        f"{name}: {info.task_type.name.lower()}, metric {info.metric}, inputs {info.input_kind} "
        f"{'x'.join(map(str, info.input_dims)) if info.input_kind != 'tokens' else '(token ids)'}, "
        f"{info.num_outputs} outputs"
    )
    source = SOURCES.get(name)
    if source is not None:
        typer.echo(f"source: {source.homepage}")
        if source.files:
            typer.echo("files `uhn data fetch` places (other accepted forms: docs/data.md):")
        for remote in source.files:
            state = "present" if (root / remote.path).exists() else "missing"
            typer.echo(f"  {state:8} {root / remote.path}")
        if source.unavailable:
            typer.echo(f"  not fetchable: {source.unavailable}")
    if not load:
        return
    started = time.perf_counter()
    data = load_task_data(TaskSpec(dataset=name), root)
    seconds = time.perf_counter() - started
    sizes = ", ".join(f"{split} {count}" for split, count in split_sizes(data).items())
    typer.echo(f"loaded in {seconds:.1f} s: {sizes}")
    for note in data.notes:
        typer.echo(f"note: {note}")


def split_sizes(data: TaskData) -> dict[str, int | str]:
    """Examples (graph: labelled nodes) per split, counted through the public interface."""
    from uhn_runtime.data import DataError

    sizes: dict[str, int | str] = {"train": _count(data.train_batches(COUNT_BATCH, seed=0))}
    for split in ("val", "test"):
        try:
            sizes[split] = _count(data.eval_batches(split, COUNT_BATCH))
        except DataError:
            sizes[split] = "none"
    return sizes


def _count(batches: Iterator[Batch]) -> int:
    return sum(int(b.node_mask.sum()) if b.node_mask is not None else len(b.targets) for b in batches)


__all__ = ["data_app", "split_sizes"]
