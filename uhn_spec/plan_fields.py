"""Reading a plan file's fields: each reader checks one field's type, dtype, shape and values,
and a field that does not fit is one ``PlanFieldError`` naming where it sits
(``targets[0].index``). ``uhn_spec.plan`` builds the plan from them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import ValidationError

from .descriptors import INDEX_FIELDS, NO_DIM, IndexDescriptors
from .spec import ExperimentSpec, format_validation_error


class PlanFieldError(ValueError):
    """A plan field that does not fit: ``"WHERE: what is wrong"`` (WHERE as ``targets[0].index``)."""


TABLE_INTS = ("offset", "numel", "layer", "param_type")
TABLE_FLOATS = ("init_mean", "init_std")


def read_field(d: Any, key: str, where: str) -> Any:
    name = f"{where}.{key}" if where else key
    if not isinstance(d, dict):
        raise PlanFieldError(f"{where or 'plan'}: a {type(d).__name__}, not a mapping")
    if key not in d:
        raise PlanFieldError(f"{name}: missing")
    return d[key]


def read_string(d: Any, key: str, where: str) -> str:
    value = read_field(d, key, where)
    if not isinstance(value, str):
        raise PlanFieldError(f"{where + '.' if where else ''}{key}: a {type(value).__name__}, not a string")
    return value


def read_tensor(d: Any, key: str, where: str, dtype: torch.dtype, shape: tuple[int | None, ...]) -> torch.Tensor:
    """Field ``key``: a contiguous, finite tensor of ``dtype`` and ``shape`` (None: any size)."""
    value, name = read_field(d, key, where), f"{where}.{key}" if where else key
    if not isinstance(value, torch.Tensor):
        raise PlanFieldError(f"{name}: a {type(value).__name__}, not a tensor")
    wanted = "[" + ", ".join("*" if size is None else str(size) for size in shape) + "]"
    if value.dtype != dtype or value.dim() != len(shape):
        raise PlanFieldError(
            f"{name}: {value.dtype} of shape {list(value.shape)}; a plan holds {dtype} of shape {wanted}"
        )
    if any(size is not None and size != actual for size, actual in zip(shape, value.shape)):
        raise PlanFieldError(f"{name}: shape {list(value.shape)}, expected {wanted}")
    if not value.is_contiguous():
        raise PlanFieldError(f"{name}: a view with strides {list(value.stride())}, not a contiguous tensor")
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise PlanFieldError(f"{name}: holds nan or inf")
    return value


def read_string_list(d: Any, key: str, where: str) -> list[str]:
    value = read_field(d, key, where)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise PlanFieldError(f"{where}.{key}: not a list of strings")
    return value


def read_int_lists(d: Any, key: str, where: str, count: int) -> list[list[int]]:
    value = read_field(d, key, where)
    if not isinstance(value, list) or len(value) != count:
        raise PlanFieldError(f"{where}.{key}: not a list of {count} entries (one per parameter tensor)")
    for i, item in enumerate(value):
        if not isinstance(item, list) or not all(type(size) is int and size >= 0 for size in item):
            raise PlanFieldError(f"{where}.{key}[{i}]: {item!r} is not a list of sizes")
    return value


def read_string_lists(d: Any, key: str, where: str, count: int) -> list[list[str]]:
    value = read_field(d, key, where)
    if not isinstance(value, list) or len(value) != count:
        raise PlanFieldError(f"{where}.{key}: not a list of {count} entries (one per parameter tensor)")
    for i, item in enumerate(value):
        if not isinstance(item, list) or not all(isinstance(name, str) and name in INDEX_FIELDS for name in item):
            raise PlanFieldError(f"{where}.{key}[{i}]: {item!r} is not a list of index fields")
    return value


def read_optional_number(d: dict[str, Any], key: str, where: str, lo: float, hi: float) -> float | None:
    value = d.get(key)
    if value is None:
        return None
    if type(value) not in (int, float) or not (math.isfinite(value) and lo <= value <= hi):
        raise PlanFieldError(f"{where}.{key}: {value!r} is not a number in [{lo}, {hi}]")
    return float(value)


def read_spec(d: Any, where: str) -> ExperimentSpec:
    try:
        return ExperimentSpec.model_validate_json(read_string(d, "spec_json", where))
    except ValidationError as err:
        raise PlanFieldError(f"{where}.spec_json: {format_validation_error(err)}") from None


def read_ranges(d: Any, key: str, fields: int) -> torch.Tensor:
    ranges = read_tensor(d, key, "", torch.float64, (fields, 2))
    if bool((ranges[:, 0] > ranges[:, 1]).any()):
        raise PlanFieldError(f"{key}: a range whose low end is above its high end")
    return ranges


def read_index_descriptors(d: Any, where: str, count: int) -> IndexDescriptors:
    constants = read_tensor(d, "constants", where, torch.int64, (count, len(INDEX_FIELDS)))
    fields = read_tensor(d, "dim_fields", where, torch.int64, (count, None))
    sizes = read_tensor(d, "dim_sizes", where, torch.int64, tuple(fields.shape))
    if bool(((fields < NO_DIM) | (fields >= len(INDEX_FIELDS))).any()):
        raise PlanFieldError(f"{where}.dim_fields: a value outside {NO_DIM}..{len(INDEX_FIELDS) - 1}")
    if bool((sizes < 0).any()) or bool(((fields == NO_DIM) & (sizes != 1)).any()):
        raise PlanFieldError(f"{where}.dim_sizes: a negative size, or a padding dimension whose size is not 1")
    index = IndexDescriptors(constants, fields, sizes)
    # Products in Python ints: an int64 product could wrap around to the table's numel.
    numels = [math.prod(row) for row in sizes.tolist()]
    if numels != index.numels().tolist():
        raise PlanFieldError(f"{where}: index descriptors do not match its parameter table (their sizes overflow)")
    return index


# Names (local to the layer's module) and shapes of one spec layer's parameter tensors.
