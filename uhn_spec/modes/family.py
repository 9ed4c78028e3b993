"""Mode ``family``: one YAML file that yields many member specs, split into seen (trained on)
and unseen (held-out) models, as in the paper's multi-model experiments.

A family file either samples the variables of a jinja2 spec template (``template`` and
``sample``, drawn as ``family_draws`` says) or lists its members (``members``). Members are
deduplicated on their architecture (the canonical spec without its name), and the last
``unseen`` members are held out, as the authors do.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from ..compiler import compile_specs
from ..errors import SpecError
from ..fields import MAX_NAME_LENGTH, StrictModel, name_field
from ..loading import apply_overrides, check_unique_names, parse_override, read_mapping, read_spec_text, validated
from ..plan import Plan
from ..spec import ExperimentSpec, spec_hash
from .family_draws import TAG_MODELS, Draw, count_space, describe, draw_variables, is_integer_draw, references
from .single import member_spec, spec_from_text

Split = Literal["seen", "unseen"]

# As the authors' sampler: give up after this many draws when `count` distinct
# architectures have not turned up.
MAX_DRAWS = 50_000
# The most members a family may ask for: each is rendered and validated, so 10,000 take
# minutes; the paper's largest families have 1,000.
MAX_FAMILY_COUNT = 10_000
# Top-level keys that make a YAML file a family rather than a single spec.
KEYS = ("template", "sample", "members")


def member_name(family: str, index: int) -> str:
    """The name of member ``index`` of family ``family``."""
    return f"{family}_{index:04d}"


# Members are named <name>_0000: the family's name leaves room for the suffix.
FamilyName = name_field(
    MAX_NAME_LENGTH - len(member_name("", MAX_FAMILY_COUNT - 1)), "members are named <name>_0000", letter_first=True
)


class FamilySpec(StrictModel):
    """A family file: how its members are produced, how many, and how they are split."""

    name: FamilyName  # type: ignore[valid-type]  # an Annotated[str, ...] built at import
    description: str = ""
    template: str | None = Field(None, description="jinja2 template of a spec, rendered with the sampled variables")
    sample: dict[str, Draw] = Field({}, description="how each template variable is drawn, in order")
    count: int | None = Field(None, ge=1, le=MAX_FAMILY_COUNT, description="distinct architectures to sample")
    members: list[str | dict[str, Any]] | None = Field(None, description="spec files or inline specs")
    unseen: int = Field(0, ge=0, description="held-out members: the last `unseen`")
    each: int | None = Field(None, ge=1, description="seen members evaluated: the first `each` (default: unseen)")
    seed: int = Field(0, ge=0, description="sampling seed")

    @model_validator(mode="after")
    def _consistent(self) -> FamilySpec:
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


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """``--set`` items for the family file itself (count, unseen, each, seed, sample...)
    and for every member spec (train.epochs, generator.hidden...)."""
    family: list[str] = []
    member: list[str] = []
    for item in overrides:
        parts, _ = parse_override(item)
        (family if parts[0] in FamilySpec.model_fields else member).append(item)
    return family, member


def load_family(path: str | Path, overrides: Sequence[str] = ()) -> Family:
    path = Path(path)
    return family_from_text(read_spec_text(path), path, overrides)


def family_from_text(text: str, source: Path | None = None, overrides: Sequence[str] = ()) -> Family:
    where = str(source) if source else None
    data = read_mapping(text, where, "a family file must be a YAML mapping with name, template/sample/count or members")
    family_overrides, member_overrides = split_overrides(overrides)
    spec = validated(FamilySpec, apply_overrides(data, family_overrides), where, formatter=format_family_error)
    variables: list[dict[str, Any]]
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
    specs = [
        member_spec(entry, source, overrides, f"members[{i}]", where) for i, entry in enumerate(spec.members or [])
    ]
    check_unique_names([s.name for s in specs], lambda i: f"members[{i}]", where)
    architectures: dict[str, int] = {}
    for i, member in enumerate(specs):
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
    plan = compile_specs([m.spec for m in family.members], source_text or family.source_text, mode="family")
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
