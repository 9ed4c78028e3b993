"""Mode ``recursive``: recursive generation, H0 -> H1 -> ... -> H_K -> leaf.

A recursive spec names a leaf (any single-model spec, by path or inline) and the depth K.
Each generated generator H_k (k >= 1) is an ordinary target of family ``uhn``, described with
the existing layer kinds (one ``mha`` and ``linear`` layers, ``generated_generator_spec``), so
its descriptors, parameter table and counts come from the compiler like any other target's.
Compiling gives one plan whose targets are
H1..H_K then the leaf, with normalisation ranges over all of them (H0's Fourier encoders,
which every H_k reuses, normalise with that union). The root generator and the training
settings are the recursive spec's; every target of the plan carries them.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from ..compiler import compile_specs
from ..fields import MAX_NAME_LENGTH, StrictModel, name_field
from ..loading import apply_overrides, read_mapping, read_spec_text, validated
from ..plan import Plan
from ..spec import ExperimentSpec, GeneratorSpec, TrainSpec, format_validation_error
from ..tasks import RECURSIVE_DATASETS
from .single import member_spec

# The deepest chain a recursive spec may ask for (H1..H16).
MAX_DEPTH = 16


def level_name(name: str, k: int) -> str:
    """The name of H_k in the chain of recursive spec ``name``."""
    return f"{name}_h{k}"


# Each H_k is named <name>_h<k>: the recursive spec's name leaves room for the suffix.
RecursiveName = name_field(MAX_NAME_LENGTH - len(level_name("", MAX_DEPTH)), "each H_k is named <name>_h<k>")

# The top-level key that makes a YAML file a recursive spec rather than a single spec.
KEYS = ("leaf",)
# H0 of the paper's recursive runs: the small config plus the structure encoder.
PAPER_ROOT = GeneratorSpec(index_freqs=1024, hidden=64, blocks=2, structure_encoder=True)


class GeneratedLayout(StrictModel):
    """The shape of every generated generator H_k beyond what the root fixes (its encoders'
    widths 2 F_u and 2 F_v, its width d): the paper's H_k has 4 hidden layers and LeakyReLU
    slope 0.1."""

    hidden_layers: int = Field(4, ge=0, description="residual hidden layers of the index path")
    slope: float = Field(0.1, ge=0.0, le=10.0, description="LeakyReLU negative slope")


class RecursiveSpec(StrictModel):
    """A recursive run: the leaf model, the depth and H0."""

    name: RecursiveName  # type: ignore[valid-type]  # an Annotated[str, ...] built at import
    description: str = ""
    leaf: str | dict[str, Any] = Field(description="the leaf spec: a path (relative to this file) or an inline spec")
    depth: int = Field(ge=0, le=MAX_DEPTH, description="K: generated generators between H0 and the leaf (0: none)")
    generated: GeneratedLayout = GeneratedLayout()
    generator: GeneratorSpec = PAPER_ROOT
    train: TrainSpec

    @model_validator(mode="after")
    def _root_has_structure(self) -> RecursiveSpec:
        if self.depth and not self.generator.structure_encoder:
            raise ValueError(
                "generator.structure_encoder: must be true for depth >= 1 (every generated generator "
                "reuses H0's structure encoder)"
            )
        return self


def generated_generator_spec(
    name: str, root: GeneratorSpec, layout: GeneratedLayout, leaf: ExperimentSpec, train: TrainSpec
) -> ExperimentSpec:
    """H_k as a target (the paper's generated generator): structure path MHA -> 2 residual Linear
    -> Linear over the mean of the layers -> Linear (zero-initialised, like H0's structure
    head); index path Linear(2 F_v -> d) -> ``hidden_layers`` residual Linear; head Linear(d -> 1)."""
    s, d, v = 2 * root.structure_freqs, root.hidden, 2 * root.index_freqs
    act = {"type": "leaky_relu", "param": layout.slope}
    residual = {"kind": "linear", "activation": act, "norm": True, "shortcut": True}
    layers: list[dict[str, Any]] = [
        {"kind": "mha", "dim": s, "heads": root.structure_heads, "shortcut": True},
        {**residual, "in_features": s, "out_features": s},
        {**residual, "in_features": s, "out_features": s},
        {"kind": "linear", "in_features": s, "out_features": d, "input_pooling": "avg_sequence"},
        {"kind": "linear", "in_features": d, "out_features": d, "activation": act, "init": "zero"},
        {"kind": "linear", "in_features": v, "out_features": d},
        *({**residual, "in_features": d, "out_features": d} for _ in range(layout.hidden_layers)),
        {"kind": "linear", "in_features": d, "out_features": 1, "activation": act},
    ]
    dataset = RECURSIVE_DATASETS[leaf.task.info.task_type].name
    return ExperimentSpec.model_validate(
        {
            "name": name,
            "description": f"a generated generator of the chain that ends in {leaf.name}",
            "family": "uhn",
            "task": {"dataset": dataset},
            "layers": layers,
            "generated": {
                "structure_freqs": root.structure_freqs,
                "index_freqs": root.index_freqs,
                "structure_layers": 5,
            },
            "generator": root.model_dump(),
            "train": train.model_dump(),
        }
    )


def load_recursive(path: str | Path, overrides: list[str] | None = None) -> tuple[RecursiveSpec, list[ExperimentSpec]]:
    """The recursive spec and the chain's target specs: H1..H_K, then the leaf."""
    path = Path(path)
    return recursive_from_text(read_spec_text(path), path, overrides)


def recursive_from_text(
    text: str, source: Path | None = None, overrides: list[str] | None = None
) -> tuple[RecursiveSpec, list[ExperimentSpec]]:
    where = str(source) if source else None
    data = read_mapping(text, where, "a recursive spec is a YAML mapping with name, leaf, depth and train")
    data = apply_overrides(copy.deepcopy(data), list(overrides or []))
    spec = validated(RecursiveSpec, data, where, formatter=lambda err: format_validation_error(err, RecursiveSpec))
    run_settings = {"generator": spec.generator.model_dump(), "train": spec.train.model_dump()}
    leaf = member_spec(spec.leaf, source, (), "leaf", where, run_settings)
    chain = [
        generated_generator_spec(level_name(spec.name, k), spec.generator, spec.generated, leaf, spec.train)
        for k in range(1, spec.depth + 1)
    ]
    return spec, [*chain, leaf]


def compile_recursive(chain: list[ExperimentSpec], source_text: str = "") -> Plan:
    """One plan: H1..H_K then the leaf, with shared (union) normalisation ranges."""
    return compile_specs(chain, source_text, mode="recursive")


__all__ = ["GeneratedLayout", "RecursiveSpec", "compile_recursive", "generated_generator_spec", "load_recursive"]
