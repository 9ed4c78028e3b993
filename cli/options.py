"""Options several commands share, defined once so their choices and defaults agree."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer


class Device(str, Enum):
    """Where to run: ``auto`` picks CUDA when it is available, else the CPU."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


DeviceOption = Annotated[Device, typer.Option("--device", help="Where to run (auto: CUDA when available).")]
DEFAULT_DEVICE = Device.auto

DataRootOption = Annotated[
    str | None,
    typer.Option("--data-root", help="Folder with the datasets (default: $UHN_DATA, else ~/.cache/uhn/data)."),
]


def nonempty_path(text: str) -> Path:
    """An output path option's value (``parser=``): an empty one is refused, as ``Path("")``
    would make it ``.`` and write into the current folder."""
    if not text:
        raise typer.BadParameter("an empty path; name the folder or file to write")
    return Path(text)
