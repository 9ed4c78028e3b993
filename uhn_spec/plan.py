"""The compiled plan: descriptor tensors and the parameter-slicing table of one or more targets.

A plan is saved as a dict of tensors, strings and numbers (``plan.pt``) that loads with
``torch.load(weights_only=True)``: it can carry no code. One format holds single-model,
multi-model, multi-task and recursive plans: a list of targets sharing normalisation ranges
and one generator spec.

Version 2 stores each target's index descriptors compactly (``IndexDescriptors``: a few
numbers per parameter tensor), not one row per weight: a plan grows with the number of
tensors, not of weights.

A plan is a file uhn may receive from elsewhere: ``load_plan`` checks it before anything uses
it (``uhn_spec.received``: the archive and its tensors fit the file; then every field's type,
dtype and shape, the tables' consistency with each other and with each target's spec, the
memory guard compile uses, and the checksum written with the plan). Each refusal is one line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from pydantic import ValidationError

from .budget import Budget, check_fits, compile_bytes
from .descriptors import (
    GLOBAL_FIELDS,
    INDEX_FIELDS,
    LOCAL_FIELDS,
    STRUCTURE_FIELDS,
    TASK_FIELDS,
    IndexDescriptors,
    Ranges,
)
from .enums import TaskType
from .errors import PlanError
from .files import atomic_write
from .layers.base import LayerTooLarge, meta_module
from .plan_fields import (
    TABLE_FLOATS,
    TABLE_INTS,
    PlanFieldError,
    read_field,
    read_index_descriptors,
    read_int_lists,
    read_optional_number,
    read_ranges,
    read_spec,
    read_string,
    read_string_list,
    read_string_lists,
    read_tensor,
)
from .received import ReceivedFileError, check_checksum, load_torch_file, with_checksum
from .spec import ExperimentSpec, GeneratorSpec, format_validation_error

PLAN_FORMAT = "uhn-plan"
PLAN_VERSION = 2

# What a plan trains as (``uhn_spec.modes``): one target; a family of seen and unseen
# architectures; several tasks drawn by probability; a chain H1..H_K of generated generators
# and its leaf.
Mode = Literal["single", "family", "multitask", "recursive"]
MODES: tuple[Mode, ...] = get_args(Mode)


@dataclass(frozen=True)
class ParamEntry:
    """One parameter tensor of a target and where it lives in the flat generated vector."""

    name: str  # as in the skeleton's named_parameters(), e.g. "layers.3.weight"
    shape: tuple[int, ...]
    offset: int
    numel: int
    layer: int
    param_type: int
    init_mean: float
    init_std: float
    index_fields: tuple[str, ...]  # index field filled by each dimension (see ParamMeta)


@dataclass
class TargetPlan:
    """Descriptors of one target model. ``params`` tile its flat weight vector in order,
    exactly once; ``index`` describes the same tensors' index rows (row i: scalar i)."""

    name: str
    spec: ExperimentSpec
    index: IndexDescriptors  # one entry per parameter tensor, in the order of ``params``
    global_row: torch.Tensor  # [6] float32
    task_row: torch.Tensor  # [2] float32
    local_rows: torch.Tensor  # [L, 21] float32
    params: list[ParamEntry]
    split: str = "seen"  # a family member's split: "seen" (trained on) or "unseen" (held out)
    # A multi-task member's normalised sampling probability (None: not a multi-task plan).
    probability: float | None = None
    # Its single-task figure in its own metric (multitask ``tasks[i].reference``), if given.
    reference: float | None = None

    @property
    def num_params(self) -> int:
        return sum(p.numel for p in self.params)

    def index_rows(self) -> torch.Tensor:
        """[N, 10] index rows, one per weight (int16 where they fit), expanded on demand."""
        return self.index.rows()

    @property
    def num_layers(self) -> int:
        return int(self.local_rows.shape[0])

    def structure_rows(self) -> torch.Tensor:
        """[L, 29]: each layer's [global; task; local] row, as the structure encoder reads it."""
        head = torch.cat([self.global_row, self.task_row]).expand(self.num_layers, -1)
        return torch.cat([head, self.local_rows], dim=1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "spec_json": self.spec.model_dump_json(),
            "index": self.index.to_dict(),
            "global_row": self.global_row,
            "task_row": self.task_row,
            "local_rows": self.local_rows,
            "params": {
                "name": [p.name for p in self.params],
                "shape": [list(p.shape) for p in self.params],
                "offset": torch.tensor([p.offset for p in self.params], dtype=torch.int64),
                "numel": torch.tensor([p.numel for p in self.params], dtype=torch.int64),
                "layer": torch.tensor([p.layer for p in self.params], dtype=torch.int64),
                "param_type": torch.tensor([p.param_type for p in self.params], dtype=torch.int64),
                "init_mean": torch.tensor([p.init_mean for p in self.params], dtype=torch.float64),
                "init_std": torch.tensor([p.init_std for p in self.params], dtype=torch.float64),
                "index_fields": [list(p.index_fields) for p in self.params],
            },
            "split": self.split,
            "probability": self.probability,
            "reference": self.reference,
        }

    @staticmethod
    def from_dict(d: dict[str, Any], where: str = "target") -> TargetPlan:
        """A target as ``to_dict`` wrote it; ``PlanFieldError`` names the first field (under
        ``where``) whose type, dtype, shape or values do not fit the rest."""
        table = read_field(d, "params", where)
        at = f"{where}.params"
        names = read_string_list(table, "name", at)
        count = len(names)
        shapes = [tuple(shape) for shape in read_int_lists(table, "shape", at, count)]
        fields = read_string_lists(table, "index_fields", at, count)
        columns = {name: read_tensor(table, name, at, torch.int64, (count,)).tolist() for name in TABLE_INTS}
        floats = {name: read_tensor(table, name, at, torch.float64, (count,)).tolist() for name in TABLE_FLOATS}
        local_rows = read_tensor(d, "local_rows", where, torch.float32, (None, len(LOCAL_FIELDS)))
        params = [
            ParamEntry(
                name=names[i],
                shape=shapes[i],
                offset=columns["offset"][i],
                numel=columns["numel"][i],
                layer=columns["layer"][i],
                param_type=columns["param_type"][i],
                init_mean=floats["init_mean"][i],
                init_std=floats["init_std"][i],
                index_fields=tuple(fields[i]),
            )
            for i in range(count)
        ]
        _check_table(params, int(local_rows.shape[0]), at)
        index = read_index_descriptors(read_field(d, "index", where), f"{where}.index", count)
        if index.numels().tolist() != [p.numel for p in params]:
            raise PlanFieldError(f"{where}.index: index descriptors do not match its parameter table")
        split = d.get("split", "seen")
        if split not in ("seen", "unseen"):
            raise PlanFieldError(f"{where}.split: {split!r} is not seen or unseen")
        return TargetPlan(
            name=read_string(d, "name", where),
            spec=read_spec(d, where),
            index=index,
            global_row=read_tensor(d, "global_row", where, torch.float32, (len(GLOBAL_FIELDS),)),
            task_row=read_tensor(d, "task_row", where, torch.float32, (len(TASK_FIELDS),)),
            local_rows=local_rows,
            params=params,
            split=split,
            probability=read_optional_number(d, "probability", where, 0.0, 1.0),
            reference=read_optional_number(d, "reference", where, -math.inf, math.inf),
        )


@dataclass
class Plan:
    targets: list[TargetPlan]
    index_ranges: Ranges  # 10 fields
    structure_ranges: Ranges  # 29 fields: global 6, task 2, local 21
    generator: GeneratorSpec
    source_text: str
    source_hash: str
    version: int = PLAN_VERSION
    # A family plan: how many seen targets (the first ones) are evaluated beside the unseen
    # ones (the family's ``each``); None: every seen target.
    evaluated_seen: int | None = None
    # A multi-task plan: its ``sampling`` section (uhn_spec.modes.multitask.TaskSamplingSpec, dumped).
    task_sampling: dict[str, Any] | None = None
    # Set by the compiler; a plan file written before the field existed gets it from its
    # targets once, when loaded (``derived_mode``).
    mode: Mode = "single"

    def target(self, name: str | None = None) -> TargetPlan:
        if name is None:
            return self.targets[0]
        for t in self.targets:
            if t.name == name:
                return t
        raise PlanError(f"plan has no target {name!r}; it has: {', '.join(t.name for t in self.targets)}")

    @property
    def recursion_depth(self) -> int:
        """K of a recursive plan (targets H1..H_K, then the leaf: ``uhn_spec.modes.recursive``), else 0."""
        return len(self.targets) - 1 if self.mode == "recursive" else 0

    @property
    def task_types(self) -> frozenset[TaskType]:
        """The task type of every target: a family's members', a multi-task plan's each, and a
        recursive plan's generated generators (``RECURSIVE``) beside its leaf's. What
        ``precision: auto`` decides by (``uhn_runtime.train.precision.auto_precision``)."""
        return frozenset(t.spec.task.info.task_type for t in self.targets)

    @property
    def trained_target(self) -> TargetPlan:
        """The target a run trains and evaluates: the leaf of a recursive plan, else the first."""
        return self.targets[-1] if self.recursion_depth else self.targets[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "version": self.version,
            "targets": [t.to_dict() for t in self.targets],
            "index_ranges": self.index_ranges.to_tensor(),
            "structure_ranges": self.structure_ranges.to_tensor(),
            "generator_json": self.generator.model_dump_json(),
            "source_text": self.source_text,
            "source_hash": self.source_hash,
            "evaluated_seen": self.evaluated_seen,
            "task_sampling": self.task_sampling,
            "mode": self.mode,
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Plan:
        targets = d.get("targets")
        if not isinstance(targets, list) or not targets:
            raise PlanFieldError("targets: missing, or not a non-empty list of targets")
        evaluated_seen = d.get("evaluated_seen")
        if evaluated_seen is not None and (type(evaluated_seen) is not int or not 0 <= evaluated_seen <= len(targets)):
            raise PlanFieldError(f"evaluated_seen: {evaluated_seen!r} is not a count of at most {len(targets)} targets")
        task_sampling = d.get("task_sampling")
        if task_sampling is not None and not isinstance(task_sampling, dict):
            raise PlanFieldError(f"task_sampling: a {type(task_sampling).__name__}, not a mapping")
        try:
            generator = GeneratorSpec.model_validate_json(read_string(d, "generator_json", ""))
        except ValidationError as err:
            raise PlanFieldError(f"generator_json: {format_validation_error(err)}") from None
        loaded = [TargetPlan.from_dict(t, f"targets[{i}]") for i, t in enumerate(targets)]
        mode = d.get("mode", derived_mode(loaded))
        if not mode_fits(mode, loaded):
            raise PlanFieldError(f"mode: {mode!r} is not one of {', '.join(MODES)} that fits its targets")
        return Plan(
            targets=loaded,
            index_ranges=Ranges.from_tensor(read_ranges(d, "index_ranges", len(INDEX_FIELDS))),
            structure_ranges=Ranges.from_tensor(read_ranges(d, "structure_ranges", len(STRUCTURE_FIELDS))),
            generator=generator,
            source_text=read_string(d, "source_text", ""),
            source_hash=read_string(d, "source_hash", ""),
            version=int(d["version"]),
            evaluated_seen=evaluated_seen,
            task_sampling=task_sampling,
            mode=mode,
        )

    def save(self, path: str | Path) -> None:
        atomic_torch_save(with_checksum(self.to_dict()), Path(path))


def derived_mode(targets: list[TargetPlan]) -> Mode:
    """The mode of a plan file written before plans stated it, as its targets show it:
    multitask when they carry probabilities, recursive for generated generators (family
    ``uhn``) then a leaf, family for several, else single."""
    if any(t.probability is not None for t in targets):
        return "multitask"
    if len(targets) > 1 and _is_chain(targets):
        return "recursive"
    return "family" if len(targets) > 1 else "single"


def _is_chain(targets: list[TargetPlan]) -> bool:
    """H1..H_K (family ``uhn``), then a leaf of another family."""
    return all(t.spec.family == "uhn" for t in targets[:-1]) and targets[-1].spec.family != "uhn"


def mode_fits(mode: Any, targets: list[TargetPlan]) -> bool:
    """Whether a stated mode can describe these targets (the runtime relies on it)."""
    if mode not in MODES or (mode == "multitask") != any(t.probability is not None for t in targets):
        return False
    return {"single": len(targets) == 1, "recursive": _is_chain(targets)}.get(mode, True)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through the one atomic writer: never a half-written file. It writes to a
    Python file object, so a full disk or a file-size limit surfaces as the OSError behind
    torch's "unexpected pos" (which ``atomic_write`` reports as one line)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)

    atomic_write(path, write)


def load_plan(path: str | Path) -> Plan:
    """The plan in ``path``, checked before use (see the module's docstring); anything that
    does not fit is one PlanError (or, over the memory guard, SpecError) line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"plan file not found: {path}")
    try:
        raw = load_torch_file(path, "uhn plan")
    except ReceivedFileError as err:
        raise PlanError(str(err)) from None
    if not isinstance(raw, dict) or raw.get("format") != PLAN_FORMAT:
        raise PlanError(f"{path}: not a uhn plan (no '{PLAN_FORMAT}' header); compile one with `uhn compile SPEC`")
    if raw.get("version") != PLAN_VERSION:
        raise PlanError(
            f"{path}: plan format version {raw.get('version')}, this uhn reads version "
            f"{PLAN_VERSION}; recompile it with `uhn compile SPEC -o {path}`"
        )
    try:
        plan = Plan.from_dict(raw)
        layer_parameters: dict[str, LayerParameters] = {}  # a family's members share layers
        for i, target in enumerate(plan.targets):
            check_target_fits_spec(target, f"targets[{i}]", str(path), layer_parameters)
    except PlanFieldError as err:
        raise PlanError(
            f"{path}: plan is missing or has malformed field {err}; recompile it with `uhn compile SPEC`"
        ) from None
    try:
        check_checksum(path, raw)
    except ReceivedFileError as err:
        raise PlanError(str(err)) from None
    return plan


def _check_table(params: list[ParamEntry], num_layers: int, where: str) -> None:
    """Each tensor's numel is its shape's product, the tensors tile the flat vector in order,
    each has one index field per dimension and belongs to one of the target's layers."""
    offset = 0
    for i, p in enumerate(params):
        if p.numel != math.prod(p.shape) or p.offset != offset:
            raise PlanFieldError(
                f"{where}: tensor {i} ({p.name}): numel {p.numel} at offset {p.offset}, where shape "
                f"{list(p.shape)} after the tensors before it gives {math.prod(p.shape)} at offset {offset}"
            )
        if len(p.index_fields) != len(p.shape):
            fields, dims = len(p.index_fields), len(p.shape)
            raise PlanFieldError(f"{where}.index_fields[{i}]: {fields} fields for {dims} dimensions")
        if not 0 <= p.layer < num_layers:
            raise PlanFieldError(f"{where}.layer[{i}]: {p.layer} is not one of the target's {num_layers} layers")
        offset += p.numel


LayerParameters = list[tuple[str, tuple[int, ...]]]


def check_target_fits_spec(target: TargetPlan, where: str, source: str, cache: dict[str, LayerParameters]) -> None:
    """The target's table names exactly the parameter tensors, with their shapes, of the model
    its spec builds (layer by layer on the meta device: nothing is allocated; ``cache`` keeps
    each distinct layer's), and those are within compile's memory guard (``uhn_spec.budget``;
    a SpecError naming ``source``)."""
    expected: LayerParameters = []
    counts = []
    for i, layer in enumerate(target.spec.layers):
        local = _layer_parameters(layer, f"{where}.spec_json.layers[{i}]", cache)
        expected += [(f"layers.{i}.{name}", shape) for name, shape in local]
        counts.append(sum(math.prod(shape) for _, shape in local))
    needed = compile_bytes(sum(counts))
    check_fits(Budget(tuple(counts), needed, needed), "compile", source)
    if target.num_layers != len(target.spec.flat_layers):
        layers = len(target.spec.flat_layers)
        raise PlanFieldError(f"{where}.local_rows: {target.num_layers} rows for the spec's {layers} layers")
    actual = [(p.name, p.shape) for p in target.params]
    if actual != expected:
        shorter = min(len(actual), len(expected))
        i = next((k for k, pair in enumerate(zip(actual, expected)) if pair[0] != pair[1]), shorter)
        have = f"{actual[i][0]} {list(actual[i][1])}" if i < len(actual) else "nothing"
        want = f"{expected[i][0]} {list(expected[i][1])}" if i < len(expected) else "nothing"
        raise PlanFieldError(f"{where}.params: tensor {i} is {have} where the target's spec has {want}")


def _layer_parameters(layer: Any, where: str, cache: dict[str, LayerParameters]) -> LayerParameters:
    key = f"{type(layer).__name__}:{layer.model_dump_json()}"
    if key not in cache:
        try:
            module = meta_module(layer)
        except LayerTooLarge as err:
            raise PlanFieldError(f"{where}: {err}") from None
        cache[key] = [(name, tuple(tensor.shape)) for name, tensor in module.named_parameters()]
    return cache[key]
