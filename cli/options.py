"""Options several commands share, defined once so their choices and defaults agree, and the
one place that reads numbers from the command line.

Every numeric option has a documented range (shown in its help) and is checked as the command
line is read, before any work starts: a value outside it, or not a number, is one line
``error: OPTION: VALUE ...; give ...`` naming the allowed range, and exit code 2. Numeric
options take ``bounded_option``; comma lists of integers and shapes go through
``parse_int_list`` in the command body (first thing), which reports the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from uhn_spec.errors import UHNError

EXIT_USER_ERROR = 2


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` to stderr; raise the returned Exit (code 2)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_USER_ERROR)


class Device(StrEnum):
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
        raise fail("-o: an empty path; name the folder or file to write")
    return Path(text)


@dataclass(frozen=True)
class NumberRange:
    """The closed range [low, high] an option's integers (``kind=int``) or finite floats take."""

    option: str
    low: int | float
    high: int | float
    kind: type = int

    @property
    def noun(self) -> str:
        return "an integer" if self.kind is int else "a number"

    @property
    def words(self) -> str:
        """The range as the error line says it."""
        return f"{self.noun} from {show(self.low)} to {show(self.high)}"

    def parse(self, text: str) -> Any:
        """``text`` as an int or float within the range; else UHNError naming option and range."""
        value = _number(text.strip(), self.kind)
        if value is None:
            raise UHNError(f"{self.option}: {text!r} is not {self.noun}; give {self.words}")
        if not self.low <= value <= self.high:
            raise UHNError(f"{self.option}: {text!r} is out of range; give {self.words}")
        return value


def show(value: int | float) -> str:
    """A range bound as the help and the error lines print it."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def _number(text: str, kind: type) -> int | float | None:
    """``text`` as a plain decimal int (no ``_``, no exponent) or a finite float; None if not."""
    try:
        if kind is int:
            return int(text) if text.lstrip("+-").isdigit() else None
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def bounded_option(flag: str, low: int | float, high: int | float, help: str, kind: type = int, **kwargs: Any) -> Any:
    """``typer.Option(flag)`` whose value is checked against [low, high] as the command line is
    read; its help ends with the range. ``kind``: int, or float (finite: no nan or inf)."""
    limits = NumberRange(flag, low, high, kind)

    def parse(value: Any) -> Any:
        if isinstance(value, kind) and not isinstance(value, bool):  # a default, already a number
            return value
        try:
            return limits.parse(str(value))
        except UHNError as err:
            raise fail(str(err)) from None

    return typer.Option(
        flag, parser=parse, metavar=f"{show(low)}..{show(high)}", help=f"{help}; {show(low)} to {show(high)}.", **kwargs
    )


def parse_int_list(
    text: str, option: str, low: int, high: int, max_items: int, example: str, distinct: bool = False
) -> tuple[int, ...]:
    """``text`` as 1 to ``max_items`` comma-separated integers, each in [low, high] (and no
    two equal with ``distinct``): an empty item (``1,,2``), a non-integer or a value out of
    range is a UHNError naming ``option``, the value and what to give, e.g. ``example``."""
    items = [item.strip() for item in text.split(",")]
    want = f"give 1 to {max_items} comma-separated integers from {low} to {high}, e.g. {example}"
    if not 1 <= len(items) <= max_items or any(not item for item in items):
        raise UHNError(f"{option}: {text!r}; {want}")
    values = tuple(_number(item, int) for item in items)
    for item, value in zip(items, values):
        if value is None or not low <= value <= high:
            where = f" in {text!r}" if len(items) > 1 else ""
            problem = "is not an integer" if value is None else "is out of range"
            raise UHNError(f"{option}: {item!r}{where} {problem}; {want}")
    if distinct and len(set(values)) != len(values):
        raise UHNError(f"{option}: {text!r} repeats a value; give each once")
    return values  # type: ignore[return-value]  # every value checked to be an int above


def parse_name_list(text: str, option: str) -> tuple[str, ...]:
    """``text`` as comma-separated names, none empty (``a,,b`` is refused, not read as ``a,b``)."""
    items = tuple(item.strip() for item in text.split(","))
    if any(not item for item in items):
        raise UHNError(f"{option}: {text!r} has an empty item; give comma-separated names, e.g. a,b")
    return items


def parse_shape(
    text: str, option: str, max_dims: int, max_side: int, max_elements: int, example: str
) -> tuple[int, ...]:
    """``text`` as a shape: 1 to ``max_dims`` comma-separated sizes from 1 to ``max_side``
    whose product is at most ``max_elements``; else a UHNError naming ``option``."""
    dims = parse_int_list(text, option, 1, max_side, max_dims, example)
    if math.prod(dims) > max_elements:
        raise UHNError(f"{option}: {text!r} holds {math.prod(dims):,} values; give a shape of at most {max_elements:,}")
    return dims
