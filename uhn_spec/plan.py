"""The compiled plan: descriptor tensors and the parameter-slicing table of one or more targets.

A plan is saved as a dict of tensors, strings and numbers (``plan.pt``) that loads with
``torch.load(weights_only=True)``: it can carry no code. One format holds single-model,
multi-model, multi-task and recursive plans: a list of targets sharing normalisation ranges
and one generator spec.

Version 2 stores each target's index descriptors compactly (``IndexDescriptors``: a few
numbers per parameter tensor), not one row per weight: a plan grows with the number of
tensors, not of weights.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .descriptors import IndexDescriptors, Ranges
from .errors import PlanError
from .files import atomic_write
from .spec import ExperimentSpec, GeneratorSpec

PLAN_FORMAT = "uhn-plan"
PLAN_VERSION = 2


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
    def from_dict(d: dict[str, Any]) -> "TargetPlan":
        t = d["params"]
        params = [
            ParamEntry(
                name=t["name"][i],
                shape=tuple(int(s) for s in t["shape"][i]),
                offset=int(t["offset"][i]),
                numel=int(t["numel"][i]),
                layer=int(t["layer"][i]),
                param_type=int(t["param_type"][i]),
                init_mean=float(t["init_mean"][i]),
                init_std=float(t["init_std"][i]),
                index_fields=tuple(t["index_fields"][i]),
            )
            for i in range(len(t["name"]))
        ]
        index = IndexDescriptors.from_dict(d["index"])
        if index.numels().tolist() != [p.numel for p in params]:
            raise ValueError(f"target {d['name']!r}: index descriptors do not match its parameter table")
        return TargetPlan(
            name=d["name"],
            spec=ExperimentSpec.model_validate_json(d["spec_json"]),
            index=index,
            global_row=d["global_row"],
            task_row=d["task_row"],
            local_rows=d["local_rows"],
            params=params,
            split=d.get("split", "seen"),
            probability=d.get("probability"),
            reference=d.get("reference"),
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
    # A multi-task plan: its ``sampling`` section (uhn_spec.multitask.TaskSamplingSpec, dumped).
    task_sampling: dict[str, Any] | None = None

    def target(self, name: str | None = None) -> TargetPlan:
        if name is None:
            return self.targets[0]
        for t in self.targets:
            if t.name == name:
                return t
        raise PlanError(f"plan has no target {name!r}; it has: {', '.join(t.name for t in self.targets)}")

    @property
    def recursion_depth(self) -> int:
        """K of a recursive plan (targets H1..H_K, then the leaf: ``uhn_spec.recursive``), else 0."""
        chain = self.targets[:-1]
        if chain and all(t.spec.family == "uhn" for t in chain) and self.targets[-1].spec.family != "uhn":
            return len(chain)
        return 0

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
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Plan":
        return Plan(
            targets=[TargetPlan.from_dict(t) for t in d["targets"]],
            index_ranges=Ranges.from_tensor(d["index_ranges"]),
            structure_ranges=Ranges.from_tensor(d["structure_ranges"]),
            generator=GeneratorSpec.model_validate_json(d["generator_json"]),
            source_text=d["source_text"],
            source_hash=d["source_hash"],
            version=int(d["version"]),
            evaluated_seen=d.get("evaluated_seen"),
            task_sampling=d.get("task_sampling"),
        )

    def save(self, path: str | Path) -> None:
        atomic_torch_save(self.to_dict(), Path(path))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through the one atomic writer: never a half-written file. It writes to a
    Python file object, so a full disk or a file-size limit surfaces as the OSError behind
    torch's "unexpected pos" (which ``atomic_write`` reports as one line)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)

    atomic_write(path, write)


def load_plan(path: str | Path) -> Plan:
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"plan file not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise PlanError(f"{path}: not a readable uhn plan (corrupt or truncated?): {reason}") from None
    except Exception as err:  # weights_only refuses anything that is not plain data
        raise PlanError(f"{path}: not a uhn plan: {type(err).__name__}") from None
    if not isinstance(raw, dict) or raw.get("format") != PLAN_FORMAT:
        raise PlanError(f"{path}: not a uhn plan (no '{PLAN_FORMAT}' header); compile one with `uhn compile SPEC`")
    if raw.get("version") != PLAN_VERSION:
        raise PlanError(
            f"{path}: plan format version {raw.get('version')}, this uhn reads version "
            f"{PLAN_VERSION}; recompile it with `uhn compile SPEC -o {path}`"
        )
    try:
        return Plan.from_dict(raw)
    except (KeyError, TypeError, IndexError, ValueError) as err:
        raise PlanError(f"{path}: plan is missing or has malformed field: {err}") from None
