"""Spec commands: ``uhn validate``, ``uhn compile`` and ``uhn inspect``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from uhn_spec.errors import UHNError
from uhn_spec.files import PLAN_SUFFIX

from .app import SetOption, command, fitting_budget, human_bytes, load_target_source, load_target_sources

if TYPE_CHECKING:
    from uhn_spec import ExperimentSpec, Plan, TargetPlan
    from uhn_spec.modes.family import Family
    from uhn_spec.source import Source

SpecPaths = Annotated[list[Path], typer.Argument(help="Spec YAML file(s).", show_default=False)]


@command("validate")
def validate(specs: SpecPaths, overrides: SetOption = None) -> None:
    """Check spec files (fields, sizes chaining from layer to layer) without compiling them;
    report each target's parameters and the memory compiling and training it need (a target
    that this machine could not even compile is an error)."""
    from uhn_spec.source import load_source

    for path in specs:
        source = load_source(path, overrides or [])
        if source.kind == "plan":
            raise UHNError(f"{path}: a compiled plan; validate its spec, or `uhn inspect {path}`")
        typer.echo(f"ok: {validate_line(source, path)}")


def validate_line(source: Source, path: Path) -> str:
    """What ``uhn validate`` says of one file: its targets' sizes (and memory, for a spec)."""
    if source.kind == "multitask":
        multitask = source.loaded
        for member in multitask.members:
            fitting_budget(member, path, "compile")
        shares = ", ".join(f"{m.name} p={p:.3f}" for m, p in zip(multitask.members, multitask.probabilities))
        sampling = multitask.spec.sampling
        extra = f"; sampling adaptive every {sampling.every} steps" if sampling.mode == "adaptive" else ""
        train = multitask.spec.train
        if train.tasks_per_step > 1:
            extra += f"; {train.tasks_per_step} tasks a step, gradient surgery {train.gradient_surgery}"
        return f"{multitask.spec.name}: {len(multitask.members)} tasks ({shares}){extra}"
    if source.kind == "family":
        return family_line(family_overview(source.loaded)["family"])
    if source.kind == "recursive":
        recursive, chain = source.loaded
        fitting_budget(chain[-1], path, "compile")
        sizes = " -> ".join(f"{s.name} {s.num_params}" for s in chain)
        return f"{recursive.name}: depth {recursive.depth}, H0 -> {sizes} params"
    (spec,) = source.loaded
    budget = fitting_budget(spec, path, "compile")
    return (
        f"{spec.name} ({budget.num_params} params, {len(spec.layers)} layers; memory: "
        f"compile ~{human_bytes(budget.compile_bytes)}, train ~{human_bytes(budget.train_bytes)})"
    )


@command("compile")
def compile_(
    specs: SpecPaths,
    output: Annotated[Path, typer.Option("--output", "-o", help=f"Plan file to write (*{PLAN_SUFFIX}).")],
    overrides: SetOption = None,
) -> None:
    """Compile specs into a plan file; several specs make one multi-target plan (shared ranges)."""
    if output.suffix != PLAN_SUFFIX:
        raise UHNError(f"--output: a plan file name ends in {PLAN_SUFFIX}, got {output}")
    plan = load_target_sources(specs, overrides)
    plan.save(output)
    if plan.recursion_depth:
        counts = "H0 -> " + " -> ".join(f"{t.name} {t.num_params} params" for t in plan.targets)
    elif len(plan.targets) > 1:
        counts = family_line(family_block([target_overview(t) for t in plan.targets]))
    else:
        counts = ", ".join(f"{t.name} {t.num_params} params" for t in plan.targets)
    typer.echo(f"wrote {output} ({human_bytes(output.stat().st_size)}): {counts}")


@command("inspect")
def inspect_(
    source: Annotated[Path, typer.Argument(help=f"A plan (*{PLAN_SUFFIX}) or a spec YAML.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    rows: Annotated[
        str | None,
        typer.Option(
            "--rows", help="Also show the index rows of this parameter tensor (e.g. layers.0.weight), one per weight."
        ),
    ] = None,
    overrides: SetOption = None,
) -> None:
    """Show a plan's parameter table per target (with each tensor's compact index descriptor
    in --json) and the generator's size; a family file: its members, seen and unseen, and
    their sizes."""
    from uhn_spec.source import file_mode, is_plan_path, load_source

    mode = None if is_plan_path(source) else file_mode(source)
    if rows is None and mode is not None and mode.mode == "family":
        summary = family_overview(load_source(source, overrides or []).loaded)  # lists, never compiles
    else:
        plan = load_target_source(source, overrides)
        if rows is not None and not any(p.name == rows for t in plan.targets for p in t.params):
            names = ", ".join(p.name for p in plan.targets[0].params[:4])
            raise UHNError(
                f"{source}: --rows: no parameter tensor {rows!r} in this plan; "
                f"give a name from its table (e.g. {names})"
            )
        summary = plan_summary(plan, rows)
    typer.echo(json.dumps(summary, indent=2) if as_json else render_summary(summary, source))


def plan_summary(plan: Plan, rows_of: str | None = None) -> dict[str, Any]:
    """The plan as plain data; ``rows_of`` adds that tensor's index rows to each target having it."""
    from uhn_runtime.model.generator import count_generator_params

    trainable, total = count_generator_params(plan.generator)
    summary: dict[str, Any] = {
        "format_version": plan.version,
        "source_hash": plan.source_hash,
        "targets": [target_summary(t, rows_of) for t in plan.targets],
        "generator": plan.generator.model_dump(mode="json"),
        "generator_params": {"trainable": trainable, "total": total},
        "depth": plan.recursion_depth,
    }
    if len(plan.targets) > 1 and not plan.recursion_depth:
        summary["family"] = family_block(summary["targets"])
    return summary


def family_overview(family: Family) -> dict[str, Any]:
    """A family file's summary from its member specs alone: no compiling, so it is quick for
    the paper's 1,000-model families. The per-parameter table is in the compiled plan's."""
    from uhn_runtime.model.generator import count_generator_params

    generator = family.members[0].spec.generator
    trainable, total = count_generator_params(generator)
    targets = [
        {
            "name": m.name,
            **spec_overview(m.spec),
            "num_params": m.spec.num_params,
            "num_layers": len(m.spec.layers),
            "split": m.split,
        }
        for m in family.members
    ]
    block = {
        "name": family.spec.name,
        **family_block(targets),
        "each": family.spec.evaluated_seen,
        "possible": family.possible,
    }
    return {
        "source_hash": hashlib.sha256(family.source_text.encode()).hexdigest(),
        "targets": targets,
        "generator": generator.model_dump(mode="json"),
        "generator_params": {"trainable": trainable, "total": total},
        "family": block,
    }


def family_block(targets: list[dict[str, Any]]) -> dict[str, Any]:
    """Count, seen/unseen and the smallest and largest member of a multi-target summary."""
    sizes = [t["num_params"] for t in targets]
    unseen = sum(t["split"] == "unseen" for t in targets)
    return {
        "count": len(targets),
        "seen": len(targets) - unseen,
        "unseen": unseen,
        "smallest": min(sizes),
        "largest": max(sizes),
    }


def family_line(block: dict[str, Any]) -> str:
    name = f"{block['name']}: " if "name" in block else ""
    possible = f"; {block['possible']} possible" if block.get("possible") else ""
    return (
        f"{name}{block['count']} models ({block['seen']} seen, {block['unseen']} unseen{possible}), "
        f"{block['smallest']} to {block['largest']} params"
    )


def spec_overview(spec: ExperimentSpec) -> dict[str, Any]:
    return {"family": spec.family, "dataset": spec.task.dataset}


def target_overview(target: TargetPlan) -> dict[str, Any]:
    return {"name": target.name, "num_params": target.num_params, "split": target.split}


def target_summary(target: TargetPlan, rows_of: str | None = None) -> dict[str, Any]:
    from uhn_spec.descriptors import INDEX_FIELDS

    spec = target.spec
    summary: dict[str, Any] = {
        "name": target.name,
        **spec_overview(spec),
        "num_params": target.num_params,
        "num_layers": target.num_layers,
        "split": target.split,
        **({"probability": target.probability} if target.probability is not None else {}),
        **({"reference": target.reference} if target.reference is not None else {}),
        "params": [
            {
                "name": p.name,
                "shape": list(p.shape),
                "offset": p.offset,
                "numel": p.numel,
                "layer": p.layer,
                "kind": spec.flat_layers[p.layer][1].kind,
                "param_type": p.param_type,
                "index": index_descriptor(target, t),
            }
            for t, p in enumerate(target.params)
        ],
    }
    for t, p in enumerate(target.params):
        if p.name == rows_of:
            summary["index_rows"] = {
                "param": p.name,
                "fields": list(INDEX_FIELDS),
                "rows": target.index.tensor_rows(t).tolist(),
            }
    return summary


def index_descriptor(target: TargetPlan, t: int) -> dict[str, Any]:
    """Tensor t's compact index descriptor: its set constant fields and its grid dims."""
    from uhn_spec.descriptors import INDEX_FIELDS, UNUSED_INDEX

    dims = target.index.dims(t)
    in_dims = {column for column, _ in dims}
    constants = {
        INDEX_FIELDS[c]: int(v)
        for c, v in enumerate(target.index.constants[t].tolist())
        if c not in in_dims and v != UNUSED_INDEX
    }
    return {"constants": constants, "dims": [[INDEX_FIELDS[c], size] for c, size in dims]}


PARAM_COLUMNS = ("layer", "kind", "name", "shape", "offset", "numel", "param_type")
HEADERS = {"name": "param", "numel": "count"}


def render_summary(summary: dict[str, Any], source: Path) -> str:
    if "format_version" in summary:
        lines = [f"{source}: plan format {summary['format_version']}, source sha256 {summary['source_hash'][:12]}"]
    else:
        lines = [f"{source}: family file, source sha256 {summary['source_hash'][:12]} (not compiled)"]
    if "family" in summary:
        lines += ["", f"family {family_line(summary['family'])}"]
        lines += member_table(summary["targets"])
    for target in summary["targets"] if "family" not in summary else []:
        lines += [
            "",
            f"target {target['name']}: {target['family']} on {target['dataset']}, "
            f"{target['num_params']} params, {target['num_layers']} layers",
        ]
        rows = [[_cell(p[c]) for c in PARAM_COLUMNS] for p in target["params"]]
        footer = ["total", "", "", "", "", str(target["num_params"]), ""]
        lines += format_table([HEADERS.get(c, c) for c in PARAM_COLUMNS], rows, footer)
        if "index_rows" in target:
            shown = target["index_rows"]
            lines += ["", f"index rows of {shown['param']} (one per weight, C order; -1: field unused):"]
            lines += format_table(shown["fields"], [[str(v) for v in row] for row in shown["rows"]], None)
    gen = summary["generator_params"]
    g = summary["generator"]
    lines += [
        "",
        f"generator: {gen['trainable']} trainable, {gen['total']} total parameters "
        f"(index_freqs {g['index_freqs']}, hidden {g['hidden']}, blocks {g['blocks']}, "
        f"structure encoder {'on' if g['structure_encoder'] else 'off'})",
    ]
    return "\n".join(lines)


def member_table(targets: list[dict[str, Any]]) -> list[str]:
    """One row per family member (instead of a parameter table each)."""
    columns = ("name", "split", "family", "dataset", "num_layers", "num_params")
    rows = [[str(t[c]) for c in columns] for t in targets]
    footer = ["total", "", "", "", "", str(sum(t["num_params"] for t in targets))]
    return format_table(["name", "split", "family", "dataset", "layers", "params"], rows, footer)


def _cell(value: Any) -> str:
    return "x".join(map(str, value)) if isinstance(value, list) else str(value)


def format_table(headers: list[str], rows: list[list[str]], footer: list[str] | None) -> list[str]:
    """Columns padded to their widest cell; numbers right-aligned, text left-aligned."""
    widths = [max(len(r[i]) for r in [headers, *([footer] if footer else []), *rows]) for i in range(len(headers))]
    numeric = [all(r[i].lstrip("-").isdigit() for r in rows) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        padded = (c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric))
        return "  " + "  ".join(padded).rstrip()

    rule = "  " + "  ".join("-" * w for w in widths)
    return [line(headers), rule, *(line(r) for r in rows), *([rule, line(footer)] if footer else [])]
