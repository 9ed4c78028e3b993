"""Reading spec files: ``--set PATH=VALUE`` overrides, number checks, and the steps every
file kind shares (a mapping at the top, a section validated with its path, one name per
member). The YAML itself is ``safe_yaml``.

Every error is a ``SpecError`` naming its YAML path and file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import SpecError
from .safe_yaml import load_yaml, parse_yaml
from .spec import format_validation_error
from .template import read_spec_file

INT64_MAX = 2**63 - 1


def check_numbers(data: Any, path: str = "") -> None:
    """Every float is finite and every integer fits 64 bits (torch's index type)."""
    stack: list[tuple[Any, str]] = [(data, path)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise SpecError(where, f"{value} is not finite; give a finite number")
        if isinstance(value, int) and abs(value) > INT64_MAX:
            raise SpecError(where, f"{value} does not fit a 64-bit integer (at most {INT64_MAX})")
        if isinstance(value, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(value))


def parse_override(item: str) -> tuple[list[str | int], Any]:
    """``train.lr=1e-4`` or ``layers[2].dropout=0.1`` -> (path parts, YAML-parsed value)."""
    if "=" not in item:
        raise SpecError("--set", f"{item!r} is not PATH=VALUE (e.g. train.epochs=3)")
    path, raw = item.split("=", 1)
    parts: list[str | int] = []
    for token in re.findall(r"[^.\[\]]+|\[\d+\]", path.strip()):
        parts.append(int(token[1:-1]) if token.startswith("[") else token)
    if not parts:
        raise SpecError("--set", f"{item!r} has an empty path")
    if not raw.strip():
        return parts, ""
    try:
        return parts, parse_yaml(raw)
    except SpecError as err:
        raise SpecError(
            "--set",
            f"{item!r}: the value is not valid YAML ({err.message.removeprefix('invalid YAML: ')}); "
            "quote a string value",
        ) from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        parts, value = parse_override(item)
        node: Any = data
        for depth, key in enumerate(parts[:-1]):
            nxt = parts[depth + 1]
            try:
                if isinstance(node, dict) and key not in node:
                    node[key] = [] if isinstance(nxt, int) else {}
                node = node[key]
            except (KeyError, IndexError, TypeError):
                raise SpecError("--set", f"{item!r}: no such path in the spec") from None
        last = parts[-1]
        try:
            node[last] = value
        except (IndexError, TypeError):
            raise SpecError("--set", f"{item!r}: no such path in the spec") from None
    return data


def read_spec_text(path: Path) -> str:
    """A spec file's text: UTF-8 (a BOM is fine), at most MAX_RENDERED_CHARS bytes of a
    regular file (``read_spec_file``)."""
    return read_spec_file(Path(path))


def read_mapping(text: str, where: str | None, what: str) -> dict[str, Any]:
    """A file's top-level YAML mapping; ``what`` says what it should hold when it is not one."""
    data = load_yaml(text, where)
    if not isinstance(data, dict):
        raise SpecError("", what, where)
    return data


Model = TypeVar("Model", bound=BaseModel)


def validated(
    model: type[Model],
    data: Any,
    where: str | None,
    path: str = "",
    formatter: Callable[[ValidationError], str] = format_validation_error,
) -> Model:
    """``model.model_validate(data)``; a failure is one SpecError at ``path`` in file ``where``."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise SpecError(path, formatter(err), where) from None


def check_unique_names(names: Sequence[str], entry: Callable[[int], str], where: str | None, inner: str = "") -> None:
    """Members are addressed by name (``--task NAME``, summary.json, models.csv): one each.
    ``entry(i)`` is member i's path, ``inner`` the path from it to the member spec."""
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            also = f"{name!r} is also {entry(seen[name])}'s name; give each member its own"
            raise SpecError(f"{entry(i)}{inner}.name", also, where)
        seen[name] = i
