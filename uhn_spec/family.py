"""Families of architectures: one YAML file that yields many member specs, split into seen
(trained on) and unseen (held-out) models, as in the paper's multi-model experiments
(reference-facts section 9).

A family file either samples the variables of a jinja2 spec template (``template`` and
``sample``) or lists its members (``members``). Sampling is deterministic on every machine:
a private ``random.Random(seed)`` of which only ``random()`` is used, the one stream Python
promises to keep across versions; no global RNG is read or advanced. Members are
deduplicated on their architecture (the canonical spec without its name), and the last
``unseen`` members are held out, as the authors do.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, ValidationError, model_validator

from .compiler import compile_specs
from .errors import SpecError
from .plan import Plan
from .spec import (
    MAX_NAME_LENGTH,
    ExperimentSpec,
    StrictModel,
    apply_overrides,
    format_validation_error,
    has_top_level_key,
    load_spec,
    load_yaml,
    name_field,
    parse_override,
    read_spec_text,
    spec_from_text,
    spec_hash,
)

Split = Literal["seen", "unseen"]

# As the authors' sampler: give up after this many draws when `count` distinct
# architectures have not turned up.
MAX_DRAWS = 50_000
# Counting a sample space branches on every value of a variable that later ones refer to;
# past this many branches the space is called uncountable and only sampling can tell.
MAX_COUNT_BRANCHES = 100_000
# The most members a family may ask for: each is rendered and validated (about 20 ms each on
# one core), so 10,000 take a few minutes; the paper's largest families have 1,000.
MAX_FAMILY_COUNT = 10_000
FLOAT_DECIMALS = 3  # floats are rounded half up to 3 decimals, as the authors do
# Top-level keys that make a YAML file a family rather than a single spec.
FAMILY_KEYS = ("template", "sample", "members")

def member_name(family: str, index: int) -> str:
    """The name of member ``index`` of family ``family``."""
    return f"{family}_{index:04d}"


# Members are named <name>_0000: the family's name leaves room for the suffix.
FamilyName = name_field(
    MAX_NAME_LENGTH - len(member_name("", MAX_FAMILY_COUNT - 1)), "members are named <name>_0000", letter_first=True
)

IntOrVariable = Union[int, str]  # a number, or the name of an integer variable drawn earlier
Scalar = Union[bool, int, float, str]


class IntDraw(StrictModel):
    """Uniform over min, min+step, ..., <= max; with ``divisible_by`` over the multiples of
    it inside [min, max]."""

    min: IntOrVariable
    max: IntOrVariable
    step: IntOrVariable = 1
    divisible_by: IntOrVariable | None = None

    @model_validator(mode="after")
    def _step_or_divisor(self) -> "IntDraw":
        if self.divisible_by is not None and self.step != 1:
            raise ValueError("give step or divisible_by, not both")
        return self


class UniformDraw(StrictModel):
    """Uniform float in [lo, hi], rounded half up to 3 decimals."""

    uniform: tuple[float, float]

    @model_validator(mode="after")
    def _ordered(self) -> "UniformDraw":
        lo, hi = self.uniform
        if lo > hi:
            raise ValueError(f"uniform: [{lo}, {hi}] is empty; write [low, high]")
        return self


class ChoiceDraw(StrictModel):
    """One of ``choice``, with probabilities ``p`` (default: all equal)."""

    choice: list[Scalar] = Field(min_length=1)
    p: list[float] | None = None

    @model_validator(mode="after")
    def _probabilities(self) -> "ChoiceDraw":
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


DRAW_TAGS = ("int", "uniform", "choice", "list")


def _draw_tag(raw: Any) -> str | None:
    """Which kind of draw a mapping is, from its keys (``None``: none of them)."""
    keys = raw.keys() if isinstance(raw, dict) else type(raw).model_fields if isinstance(raw, StrictModel) else ()
    for key, tag in (("length", "list"), ("choice", "choice"), ("uniform", "uniform"), ("min", "int"), ("max", "int")):
        if key in keys:
            return tag
    return None


DRAW_HELP = "a draw is {min, max[, step | divisible_by]}, {uniform: [lo, hi]}, {choice: [...][, p: [...]]} or {length, item[, at]}"

ScalarDraw = Annotated[
    Union[
        Annotated[IntDraw, Tag("int")],
        Annotated[UniformDraw, Tag("uniform")],
        Annotated[ChoiceDraw, Tag("choice")],
    ],
    Discriminator(_draw_tag, custom_error_type="draw_kind", custom_error_message=DRAW_HELP),
]


class ListDraw(StrictModel):
    """A list of ``length`` values, each drawn independently by ``item``; ``at`` overrides
    the draw of single positions (0-based), as the authors' per-index ``name_{i}``."""

    length: IntOrVariable
    item: ScalarDraw | None = None
    at: dict[int, ScalarDraw] = {}

    @model_validator(mode="after")
    def _positions(self) -> "ListDraw":
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
    Union[
        Annotated[IntDraw, Tag("int")],
        Annotated[UniformDraw, Tag("uniform")],
        Annotated[ChoiceDraw, Tag("choice")],
        Annotated[ListDraw, Tag("list")],
    ],
    Discriminator(_draw_tag, custom_error_type="draw_kind", custom_error_message=DRAW_HELP),
]


class FamilySpec(StrictModel):
    """A family file: how its members are produced, how many, and how they are split."""

    name: FamilyName  # type: ignore[valid-type]
    description: str = ""
    template: str | None = Field(None, description="jinja2 template of a spec, rendered with the sampled variables")
    sample: dict[str, Draw] = Field({}, description="how each template variable is drawn, in order")
    count: int | None = Field(None, ge=1, le=MAX_FAMILY_COUNT, description="distinct architectures to sample")
    members: list[str | dict[str, Any]] | None = Field(None, description="spec files or inline specs")
    unseen: int = Field(0, ge=0, description="held-out members: the last `unseen`")
    each: int | None = Field(None, ge=1, description="seen members evaluated: the first `each` (default: unseen)")
    seed: int = Field(0, ge=0, description="sampling seed")

    @model_validator(mode="after")
    def _consistent(self) -> "FamilySpec":
        if (self.template is None) == (self.members is None):
            raise ValueError("give exactly one of template (with sample and count) and members")
        if self.members is not None:
            if self.sample:
                raise ValueError("sample: only a template family samples; members lists its specs")
            if not self.members:
                raise ValueError("members: list at least one spec file or inline spec")
            if self.count is not None and self.count != len(self.members):
                raise ValueError(f"count: {self.count} but members lists {len(self.members)}; drop count")
        elif self.count is None:
            raise ValueError("count: a template family needs count, the number of distinct architectures")
        if self.unseen >= self.size:
            raise ValueError(f"unseen: {self.unseen} leaves no seen member of {self.size}; hold out fewer")
        if self.evaluated_seen > self.size - self.unseen:
            raise ValueError(f"each: {self.evaluated_seen} exceeds the {self.size - self.unseen} seen members")
        self._check_variables()
        return self

    def _check_variables(self) -> None:
        earlier: dict[str, Any] = {}
        for name, draw in self.sample.items():
            if not name.isidentifier():
                raise ValueError(f"sample.{name}: a variable name must be an identifier (letters, digits, _)")
            for where, ref in references(draw):
                target = earlier.get(ref)
                if target is None or not is_integer_draw(target):
                    raise ValueError(
                        f"sample.{name}.{where}: {ref!r} is not an integer variable listed before "
                        f"{name!r}; variables are drawn in the order they are listed"
                    )
            earlier[name] = draw

    @property
    def size(self) -> int:
        return len(self.members) if self.members is not None else int(self.count or 0)

    @property
    def evaluated_seen(self) -> int:
        """How many seen members are evaluated: ``each``, else as many as are unseen (all
        seen members when none is held out)."""
        if self.each is not None:
            return self.each
        return self.unseen if self.unseen else self.size


def references(draw: Any) -> list[tuple[str, str]]:
    """(field, variable name) of every variable a draw refers to."""
    if isinstance(draw, ListDraw):
        found = [("length", draw.length)] if isinstance(draw.length, str) else []
        positions = ([("item", draw.item)] if draw.item is not None else []) + [(f"at.{k}", d) for k, d in draw.at.items()]
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


# --------------------------------------------------------------------------- drawing values


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


# --------------------------------------------------------------------------- the family


@dataclass(frozen=True)
class FamilyMember:
    name: str
    spec: ExperimentSpec
    split: Split
    variables: dict[str, Any] = field(default_factory=dict)  # the draw that produced it


@dataclass(frozen=True)
class Family:
    """A family's members in order (seen first, the last ``unseen`` held out)."""

    spec: FamilySpec
    members: tuple[FamilyMember, ...]
    possible: int | None  # distinct variable settings of the sample space (None: uncountable)
    source_text: str

    @property
    def seen(self) -> list[FamilyMember]:
        return [m for m in self.members if m.split == "seen"]

    @property
    def unseen(self) -> list[FamilyMember]:
        return [m for m in self.members if m.split == "unseen"]

    @property
    def evaluated_seen(self) -> list[FamilyMember]:
        """The seen members whose test accuracy is reported: the first ``each``."""
        return self.seen[: self.spec.evaluated_seen]


def architecture_key(spec: ExperimentSpec) -> str:
    """The canonical spec's hash with its name and description blanked: two members with
    the same key are the same architecture, task, generator and training."""
    return spec_hash(spec.model_copy(update={"name": "member", "description": ""}))


def is_family_file(path: str | Path) -> bool:
    """A family file: a plain YAML mapping with a top-level template, sample or members key."""
    return has_top_level_key(path, FAMILY_KEYS)


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """``--set`` items for the family file itself (count, unseen, each, seed, sample...)
    and for every member spec (train.epochs, generator.hidden...)."""
    family, member = [], []
    for item in overrides:
        parts, _ = parse_override(item)
        (family if parts[0] in FamilySpec.model_fields else member).append(item)
    return family, member


def load_family(path: str | Path, overrides: Sequence[str] = ()) -> Family:
    path = Path(path)
    text = read_spec_text(path)
    return family_from_text(text, path, overrides)


def family_from_text(text: str, source: Path | None = None, overrides: Sequence[str] = ()) -> Family:
    where = str(source) if source else None
    data = load_yaml(text, where)
    if not isinstance(data, dict):
        raise SpecError("", "a family file must be a YAML mapping with name, template/sample/count or members", where)
    family_overrides, member_overrides = split_overrides(overrides)
    data = apply_overrides(data, family_overrides)
    try:
        spec = FamilySpec.model_validate(data)
    except ValidationError as err:
        raise SpecError("", format_family_error(err), where) from None
    if spec.members is not None:
        specs = listed_members(spec, source, member_overrides)
        possible, variables = len(specs), [{} for _ in specs]
    else:
        possible = _checked(lambda: count_space(spec.sample), where)
        if possible is not None and possible < spec.size:
            raise SpecError(
                "count",
                f"{spec.size} distinct architectures asked, but the sample can give at most "
                f"{possible}; lower count or widen the sample ranges",
                where,
            )
        sampled = _checked(lambda: sample_members(spec, source, member_overrides), where)
        variables, specs = [v for v, _ in sampled], [s for _, s in sampled]
    first_unseen = spec.size - spec.unseen
    members = tuple(
        FamilyMember(s.name, s, "unseen" if i >= first_unseen else "seen", v)
        for i, (s, v) in enumerate(zip(specs, variables))
    )
    return Family(spec, members, possible, text)


def _checked(job: Callable[[], Any], where: str | None) -> Any:
    """Run ``job``, giving its SpecErrors the family file's name."""
    try:
        return job()
    except SpecError as err:
        if err.source:
            raise
        raise SpecError(err.path, err.message, where) from None


def sample_members(
    spec: FamilySpec, source: Path | None, overrides: Sequence[str]
) -> list[tuple[dict[str, Any], ExperimentSpec]]:
    """Draw variable settings until ``count`` distinct architectures are found."""
    rng = random.Random(spec.seed)
    tried: set[str] = set()
    architectures: set[str] = set()
    found: list[tuple[dict[str, Any], ExperimentSpec]] = []
    for _ in range(MAX_DRAWS):
        variables = draw_variables(spec.sample, rng)
        key = json.dumps(variables, sort_keys=True)
        if key in tried:
            continue
        tried.add(key)
        member = render_member(spec, variables, member_name(spec.name, len(found)), source, overrides)
        architecture = architecture_key(member)
        if architecture in architectures:
            continue
        architectures.add(architecture)
        found.append((variables, member))
        if len(found) == spec.size:
            return found
    raise SpecError(
        "count",
        f"{spec.size} distinct architectures asked, but {MAX_DRAWS} draws (seed {spec.seed}) "
        f"gave only {len(found)}; lower count or widen the sample ranges",
    )


def render_member(
    spec: FamilySpec, variables: dict[str, Any], name: str, source: Path | None, overrides: Sequence[str]
) -> ExperimentSpec:
    try:
        return spec_from_text(str(spec.template), source, [f"name={name}", *overrides], variables)
    except SpecError as err:
        inner = f"{err.path}: {err.message}" if err.path else err.message
        raise SpecError("template", f"with {describe(variables) or 'no variables'}: {inner}") from None


def listed_members(spec: FamilySpec, source: Path | None, overrides: Sequence[str]) -> list[ExperimentSpec]:
    """The ``members`` list: spec files (relative to the family file) or inline specs, each
    listed once and named uniquely."""
    where = str(source) if source else None
    base = source.parent if source else Path.cwd()
    specs: list[ExperimentSpec] = []
    for i, entry in enumerate(spec.members or []):
        if isinstance(entry, str):
            specs.append(load_spec(base / entry, list(overrides)))
            continue
        data = apply_overrides(copy.deepcopy(entry), list(overrides))
        try:
            specs.append(ExperimentSpec.model_validate(data))
        except ValidationError as err:
            raise SpecError(f"members[{i}]", format_validation_error(err), where) from None
    names: dict[str, int] = {}
    architectures: dict[str, int] = {}
    for i, member in enumerate(specs):
        if member.name in names:
            raise SpecError(
                f"members[{i}].name",
                f"{member.name!r} is also members[{names[member.name]}]'s name; give each member its own",
                where,
            )
        names[member.name] = i
        key = architecture_key(member)
        if key in architectures:
            raise SpecError(
                f"members[{i}]", f"same architecture as members[{architectures[key]}]; list each once", where
            )
        architectures[key] = i
    return specs


def compile_family(family: Family, source_text: str = "") -> Plan:
    """Compile every member, seen and unseen, into one plan with shared normalisation
    ranges (as the authors normalise over the whole model set); each target records its split."""
    plan = compile_specs([m.spec for m in family.members], source_text=source_text or family.source_text)
    for target, member in zip(plan.targets, family.members):
        target.split = member.split
    plan.evaluated_seen = family.spec.evaluated_seen
    return plan


# --------------------------------------------------------------------------- error messages


def format_family_error(err: ValidationError) -> str:
    """One line for the first problem, its path as the file spells it (no union tags)."""
    errors = err.errors()
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    path, model = _family_path(first["loc"])
    if first["type"] == "extra_forbidden":
        return f"{path}: unknown field; allowed here: {', '.join(model.model_fields)}"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "value_error" and ": " in message and " " not in message.split(": ", 1)[0]:
        # Validators name their own field relative to the model that raised them.
        field_path, message = message.split(": ", 1)
        path = f"{path}.{field_path}" if path else field_path
    got = first.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None or "(got " in message else f" (got {got!r})"
    return f"{path}: {message}{shown}" if path else f"{message}{shown}"


TAG_MODELS = {"int": IntDraw, "uniform": UniformDraw, "choice": ChoiceDraw, "list": ListDraw}


def _family_path(loc: tuple[Any, ...]) -> tuple[str, type[StrictModel]]:
    """YAML path of a validation error location, and the model found there."""
    parts: list[str] = []
    model: type[StrictModel] = FamilySpec
    expect_tag = False
    for depth, item in enumerate(loc):
        if expect_tag and item in TAG_MODELS:
            model, expect_tag = TAG_MODELS[item], False
            continue
        parts.append(f"[{item}]" if isinstance(item, int) and parts and parts[-1] != "at" else str(item))
        before = loc[depth - 1] if depth else None
        expect_tag = before in ("sample", "at") or item == "item"
    return ".".join(parts).replace(".[", "["), model
