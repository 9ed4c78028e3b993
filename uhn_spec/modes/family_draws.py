"""The ``sample`` section of a template family: how each template variable is drawn, and
how many distinct settings a sample space holds.

Sampling is deterministic on every machine: a private ``random.Random(seed)`` of which only
``random()`` is used, the one stream Python promises to keep across versions; no global RNG is
read or advanced. Floats are rounded half up to 3 decimals, as the authors do.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any

from pydantic import Discriminator, Field, Tag, model_validator

from ..errors import SpecError
from ..fields import StrictModel

# Counting a sample space branches on every value of a variable that later ones refer to;
# past this many branches the space is called uncountable and only sampling can tell.
MAX_COUNT_BRANCHES = 100_000
FLOAT_DECIMALS = 3  # floats are rounded half up to 3 decimals, as the authors do

IntOrVariable = int | str  # a number, or the name of an integer variable drawn earlier
Scalar = bool | int | float | str


class IntDraw(StrictModel):
    """Uniform over min, min+step, ..., <= max; with ``divisible_by`` over the multiples of
    it inside [min, max]."""

    min: IntOrVariable
    max: IntOrVariable
    step: IntOrVariable = 1
    divisible_by: IntOrVariable | None = None

    @model_validator(mode="after")
    def _step_or_divisor(self) -> IntDraw:
        if self.divisible_by is not None and self.step != 1:
            raise ValueError("give step or divisible_by, not both")
        return self


class UniformDraw(StrictModel):
    """Uniform float in [lo, hi], rounded half up to 3 decimals."""

    uniform: tuple[float, float]

    @model_validator(mode="after")
    def _ordered(self) -> UniformDraw:
        lo, hi = self.uniform
        if lo > hi:
            raise ValueError(f"uniform: [{lo}, {hi}] is empty; write [low, high]")
        return self


class ChoiceDraw(StrictModel):
    """One of ``choice``, with probabilities ``p`` (default: all equal)."""

    choice: list[Scalar] = Field(min_length=1)
    p: list[float] | None = None

    @model_validator(mode="after")
    def _probabilities(self) -> ChoiceDraw:
        if self.p is None:
            return self
        if len(self.p) != len(self.choice):
            raise ValueError(f"p: {len(self.p)} probabilities for {len(self.choice)} choices; give one per choice")
        if any(p < 0 for p in self.p) or sum(self.p) <= 0:
            raise ValueError(f"p: {self.p} must be non-negative with a positive sum")
        return self

    def weighted(self) -> list[tuple[Scalar, float]]:
        weights = self.p if self.p is not None else [1.0] * len(self.choice)
        return list(zip(self.choice, weights))

    def possible_values(self) -> list[Scalar]:
        """Distinct values with a non-zero probability, in order."""
        values: list[Scalar] = []
        for value, weight in self.weighted():
            if weight > 0 and value not in values:
                values.append(value)
        return values


def _draw_tag(raw: Any) -> str | None:
    """Which kind of draw a mapping is, from its keys (``None``: none of them)."""
    keys = raw.keys() if isinstance(raw, dict) else type(raw).model_fields if isinstance(raw, StrictModel) else ()
    for key, tag in (("length", "list"), ("choice", "choice"), ("uniform", "uniform"), ("min", "int"), ("max", "int")):
        if key in keys:
            return tag
    return None


DRAW_HELP = (
    "a draw is {min, max[, step | divisible_by]}, "
    "{uniform: [lo, hi]}, {choice: [...][, p: [...]]} or {length, item[, at]}"
)

ScalarDraw = Annotated[
    Annotated[IntDraw, Tag("int")] | Annotated[UniformDraw, Tag("uniform")] | Annotated[ChoiceDraw, Tag("choice")],
    Discriminator(_draw_tag, custom_error_type="draw_kind", custom_error_message=DRAW_HELP),
]


class ListDraw(StrictModel):
    """A list of ``length`` values, each drawn independently by ``item``; ``at`` overrides
    the draw of single positions (0-based), as the authors' per-index ``name_{i}``."""

    length: IntOrVariable
    item: ScalarDraw | None = None
    at: dict[int, ScalarDraw] = {}

    @model_validator(mode="after")
    def _positions(self) -> ListDraw:
        if isinstance(self.length, int):
            if self.length < 0:
                raise ValueError(f"length: {self.length} must be >= 0")
            for position in self.at:
                if not 0 <= position < self.length:
                    raise ValueError(f"at.{position}: not a position of a list of length {self.length}")
            if self.item is None and set(self.at) != set(range(self.length)):
                raise ValueError("item: give item, or at for every position")
        elif self.item is None:
            raise ValueError("item: a list whose length is a variable needs item")
        return self

    def position(self, index: int) -> Any:
        return self.at.get(index, self.item)


Draw = Annotated[
    Annotated[IntDraw, Tag("int")]
    | Annotated[UniformDraw, Tag("uniform")]
    | Annotated[ChoiceDraw, Tag("choice")]
    | Annotated[ListDraw, Tag("list")],
    Discriminator(_draw_tag, custom_error_type="draw_kind", custom_error_message=DRAW_HELP),
]


def references(draw: Any) -> list[tuple[str, str]]:
    """(field, variable name) of every variable a draw refers to."""
    if isinstance(draw, ListDraw):
        found = [("length", draw.length)] if isinstance(draw.length, str) else []
        positions = ([("item", draw.item)] if draw.item is not None else []) + [
            (f"at.{k}", d) for k, d in draw.at.items()
        ]
        for where, inner in positions:
            found += [(f"{where}.{f}", ref) for f, ref in references(inner)]
        return found
    if isinstance(draw, IntDraw):
        fields = ("min", "max", "step", "divisible_by")
        return [(f, getattr(draw, f)) for f in fields if isinstance(getattr(draw, f), str)]
    return []


def is_integer_draw(draw: Any) -> bool:
    if isinstance(draw, IntDraw):
        return True
    return isinstance(draw, ChoiceDraw) and all(type(v) is int for v in draw.choice)


def _resolve(value: IntOrVariable, variables: dict[str, Any]) -> int:
    return variables[value] if isinstance(value, str) else value


def int_values(draw: IntDraw, variables: dict[str, Any], path: str) -> range:
    """Every value an integer draw can give, once its variable references are known."""
    lo, hi, step = (_resolve(v, variables) for v in (draw.min, draw.max, draw.step))
    if step < 1:
        raise SpecError(path + ".step", f"{step} must be >= 1")
    if draw.divisible_by is None:
        values, what = range(lo, hi + 1, step), f"[{lo}, {hi}]"
    else:
        divisor = _resolve(draw.divisible_by, variables)
        if divisor < 1:
            raise SpecError(path + ".divisible_by", f"{divisor} must be >= 1")
        values, what = range(-(-lo // divisor) * divisor, hi + 1, divisor), f"[{lo}, {hi}] divisible by {divisor}"
    if not values:
        raise SpecError(path, f"no integer in {what}{_when(draw, variables)}; widen min/max")
    return values


def _when(draw: IntDraw, variables: dict[str, Any]) -> str:
    used = sorted({ref for _, ref in references(draw)})
    return f" (with {describe({k: variables[k] for k in used})})" if used else ""


def uniform_grid(draw: UniformDraw) -> range:
    """The float draw's possible values, in thousandths: its rounded values are countable."""
    lo, hi = (_round(v) for v in draw.uniform)
    scale = 10**FLOAT_DECIMALS
    return range(round(lo * scale), round(hi * scale) + 1)


def _round(value: float) -> float:
    return float(Decimal(repr(value)).quantize(Decimal(1).scaleb(-FLOAT_DECIMALS), rounding=ROUND_HALF_UP))


def draw_value(draw: Any, variables: dict[str, Any], rng: random.Random, path: str) -> Any:
    """One value of ``draw`` (a list for a ListDraw); uses only ``rng.random()``."""
    if isinstance(draw, ListDraw):
        length = _list_length(draw, variables, path)
        return [draw_value(draw.position(i), variables, rng, f"{path}.at.{i}") for i in range(length)]
    if isinstance(draw, IntDraw):
        values = int_values(draw, variables, path)
        return values[int(rng.random() * len(values))]
    if isinstance(draw, UniformDraw):
        lo, hi = draw.uniform
        return _round(lo + rng.random() * (hi - lo))
    pairs = draw.weighted()
    threshold = rng.random() * sum(weight for _, weight in pairs)
    for value, weight in pairs:
        threshold -= weight
        if threshold < 0 and weight > 0:
            return value
    return next(value for value, weight in reversed(pairs) if weight > 0)


def _list_length(draw: ListDraw, variables: dict[str, Any], path: str) -> int:
    length = _resolve(draw.length, variables)
    if length < 0:
        raise SpecError(path + ".length", f"{length} (from {draw.length}) must be >= 0")
    return length


def domain_size(draw: Any, variables: dict[str, Any], path: str) -> int:
    """How many distinct values ``draw`` can give."""
    if isinstance(draw, ListDraw):
        size = 1
        for i in range(_list_length(draw, variables, path)):
            size *= domain_size(draw.position(i), variables, f"{path}.at.{i}")
        return size
    if isinstance(draw, IntDraw):
        return len(int_values(draw, variables, path))
    if isinstance(draw, UniformDraw):
        return len(uniform_grid(draw))
    return len(draw.possible_values())


def count_space(sample: dict[str, Any]) -> int | None:
    """How many distinct variable settings ``sample`` can draw: an exact count that
    branches on the values of every variable a later one refers to. ``None`` when that
    takes more than MAX_COUNT_BRANCHES branches."""
    items = list(sample.items())
    referenced = {ref for _, draw in items for _, ref in references(draw)}
    branches = 0

    def count_from(index: int, variables: dict[str, Any]) -> int | None:
        nonlocal branches
        if index == len(items):
            return 1
        name, draw = items[index]
        path = f"sample.{name}"
        if name not in referenced:
            rest = count_from(index + 1, variables)
            return None if rest is None else domain_size(draw, variables, path) * rest
        if isinstance(draw, IntDraw):
            values: Sequence[Any] = int_values(draw, variables, path)
        else:
            values = draw.possible_values()
        total = 0
        for value in values:
            branches += 1
            rest = None if branches > MAX_COUNT_BRANCHES else count_from(index + 1, {**variables, name: value})
            if rest is None:
                return None
            total += rest
        return total

    return count_from(0, {})


def draw_variables(sample: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    variables: dict[str, Any] = {}
    for name, draw in sample.items():
        variables[name] = draw_value(draw, variables, rng, f"sample.{name}")
    return variables


def describe(variables: dict[str, Any]) -> str:
    return ", ".join(f"{name}={value}" for name, value in variables.items())


TAG_MODELS: dict[str, type[StrictModel]] = {
    "int": IntDraw,
    "uniform": UniformDraw,
    "choice": ChoiceDraw,
    "list": ListDraw,
}
