"""Spec commands: ``uhn validate``, ``uhn compile`` and ``uhn inspect``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from uhn_spec.errors import UHNError

from .main import PLAN_SUFFIX, SetOption, command, fitting_budget, human_bytes, load_target_source, load_target_sources

if TYPE_CHECKING:
    from uhn_spec import Plan, TargetPlan

SpecPaths = Annotated[list[Path], typer.Argument(help="Spec YAML file(s).", show_default=False)]


@command("validate")
def validate(specs: SpecPaths, overrides: SetOption = None) -> None:
    """Check spec files (fields, sizes chaining from layer to layer) without compiling them;
    report each target's parameters and the memory compiling and training it need (a target
    that this machine could not even compile is an error)."""
    from uhn_spec import load_spec

    for path in specs:
        spec = load_spec(path, overrides)
        budget = fitting_budget(spec, path, "compile")
        typer.echo(
            f"ok: {spec.name} ({budget.num_params} params, {len(spec.layers)} layers; memory: "
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
    counts = ", ".join(f"{t.name} {t.num_params} params" for t in plan.targets)
    typer.echo(f"wrote {output} ({human_bytes(output.stat().st_size)}): {counts}")


@command("inspect")
def inspect_(
    source: Annotated[Path, typer.Argument(help=f"A plan (*{PLAN_SUFFIX}) or a spec YAML.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    overrides: SetOption = None,
) -> None:
    """Show a plan's parameter table per target and the generator's size."""
    plan = load_target_source(source, overrides)
    summary = plan_summary(plan)
    typer.echo(json.dumps(summary, indent=2) if as_json else render_summary(summary, source))


def plan_summary(plan: Plan) -> dict[str, Any]:
    from uhn_runtime.generator import count_generator_params

    trainable, total = count_generator_params(plan.generator)
    return {
        "format_version": plan.version,
        "source_hash": plan.source_hash,
        "targets": [target_summary(t) for t in plan.targets],
        "generator": plan.generator.model_dump(mode="json"),
        "generator_params": {"trainable": trainable, "total": total},
    }


def target_summary(target: TargetPlan) -> dict[str, Any]:
    spec = target.spec
    return {
        "name": target.name,
        "family": spec.family,
        "dataset": spec.task.dataset,
        "num_params": target.num_params,
        "num_layers": target.num_layers,
        "params": [
            {
                "name": p.name,
                "shape": list(p.shape),
                "offset": p.offset,
                "numel": p.numel,
                "layer": p.layer,
                "kind": spec.layers[p.layer].kind,
                "param_type": p.param_type,
            }
            for p in target.params
        ],
    }


PARAM_COLUMNS = ("layer", "kind", "name", "shape", "offset", "numel", "param_type")
HEADERS = {"name": "param", "numel": "count"}


def render_summary(summary: dict[str, Any], source: Path) -> str:
    lines = [f"{source}: plan format {summary['format_version']}, source sha256 {summary['source_hash'][:12]}"]
    for target in summary["targets"]:
        lines += ["", f"target {target['name']}: {target['family']} on {target['dataset']}, "
                  f"{target['num_params']} params, {target['num_layers']} layers"]
        rows = [[_cell(p[c]) for c in PARAM_COLUMNS] for p in target["params"]]
        footer = ["total", "", "", "", "", str(target["num_params"]), ""]
        lines += format_table([HEADERS.get(c, c) for c in PARAM_COLUMNS], rows, footer)
    gen = summary["generator_params"]
    g = summary["generator"]
    lines += [
        "",
        f"generator: {gen['trainable']} trainable, {gen['total']} total parameters "
        f"(index_freqs {g['index_freqs']}, hidden {g['hidden']}, blocks {g['blocks']}, "
        f"structure encoder {'on' if g['structure_encoder'] else 'off'})",
    ]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return "x".join(map(str, value)) if isinstance(value, list) else str(value)


def format_table(headers: list[str], rows: list[list[str]], footer: list[str]) -> list[str]:
    """Columns padded to their widest cell; numbers right-aligned, text left-aligned."""
    widths = [max(len(r[i]) for r in [headers, footer, *rows]) for i in range(len(headers))]
    numeric = [all(r[i].lstrip("-").isdigit() for r in rows) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        padded = (c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric))
        return "  " + "  ".join(padded).rstrip()

    rule = "  " + "  ".join("-" * w for w in widths)
    return [line(headers), rule, *(line(r) for r in rows), rule, line(footer)]
