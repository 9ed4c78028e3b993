"""Options several commands share, defined once so their choices and defaults agree."""

from __future__ import annotations

from enum import Enum
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
