"""Task data: one loader per dataset, all yielding the same ``Batch`` to the training loop.

A loader is registered under the dataset name of ``uhn_spec.tasks.DATASETS`` (plus
``synthetic``) and turns a ``TaskSpec`` and a data root into a ``TaskData``. Image, text,
formula and graph tasks all go through the same loop: a graph epoch is one full-graph batch
whose ``node_mask`` selects the nodes that count.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from pathlib import Path

from uhn_spec.spec import TaskSpec

from .resize import resized
from .task_data import LOADERS, Batch, DataError, Loader, Split, TaskData, register_loader

__all__ = [
    "LOADERS",
    "Batch",
    "DataError",
    "Loader",
    "Split",
    "TaskData",
    "register_loader",
    "default_data_root",
    "load_task_data",
    "resolve_data_root",
]


def default_data_root() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "uhn" / "data"


def resolve_data_root(flag: str | Path | None = None) -> Path:
    """--data-root, else $UHN_DATA, else a per-user cache folder."""
    if flag:
        return Path(flag).expanduser()
    if os.environ.get("UHN_DATA"):
        return Path(os.environ["UHN_DATA"]).expanduser()
    return default_data_root()


def load_task_data(task: TaskSpec, data_root: str | Path | None = None) -> TaskData:
    _import_loaders()
    loader = LOADERS.get(task.dataset)
    if loader is None:
        raise DataError(f"no loader for dataset {task.dataset!r}; known: {', '.join(sorted(LOADERS))}")
    data = loader(task, resolve_data_root(data_root))
    if task.resize is not None:
        data = resized(data, (task.resize[0], task.resize[1]))
    if task.stands_in_for is not None:  # part of what the run's numbers mean
        data.notes.append(f"{task.dataset} stands in for {task.stands_in_for} (task.stands_in_for)")
    return data


def _import_loaders() -> None:
    # Loaders register themselves on import; importing here keeps heavy optional imports
    # (torch_geometric, PIL, scipy) off the path of commands that never load data.
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
