"""``uhn export`` and ``uhn evaluate``: a run's generated (or direct) weights as plain weights or ONNX,
or their test metric."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from uhn_spec.errors import UHNError

from .app import command, fitting_budget, human_bytes
from .options import DEFAULT_DEVICE, DataRootOption, DeviceOption, bounded_option

EXPORT_SUFFIX = ".safetensors"
ONNX_SUFFIX = ".onnx"
# The bound of --recalibrate-bn (every numeric option has one).
MAX_RECALIBRATION_BATCHES = 100_000


@command("export")
def export(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help=f"A finished run folder (with --onnx also an exported *{EXPORT_SUFFIX}).", show_default=False
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help=f"File to write (*{EXPORT_SUFFIX}; with --onnx *{ONNX_SUFFIX}).", show_default=False
        ),
    ],
    source: Annotated[str, typer.Option("--source", help="Which weights: uhn (generated) or direct.")] = "uhn",
    onnx: Annotated[
        bool,
        typer.Option("--onnx", help="Write an ONNX model (dynamic batch), checked with onnxruntime; needs uhn[onnx]."),
    ] = False,
    device: DeviceOption = DEFAULT_DEVICE,
    recalibrate_bn: Annotated[
        int,
        bounded_option(
            "--recalibrate-bn",
            0,
            MAX_RECALIBRATION_BATCHES,
            "BatchNorm models: recompute the running statistics for the generated weights over this many training "
            "batches (0: keep the defaults; at most one epoch's)",
        ),
    ] = 10,
    for_module: Annotated[
        str | None,
        typer.Option(
            "--for-module",
            metavar="MODULE:ATTR",
            help="Write the state_dict of the original nn.Module the spec was imported from (uhn import), "
            "which it loads with strict=True.",
            show_default=False,
        ),
    ] = None,
    data_root: DataRootOption = None,
    levels: Annotated[
        bool,
        typer.Option(
            "--levels", help="A recursive run: also write each generated generator H_k, as OUTPUT's name plus .hK."
        ),
    ] = False,
    model: Annotated[
        str | None,
        typer.Option("--model", help="Of a family run: export this member (seen or unseen).", show_default=False),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option("--task", help="Of a multi-task run: export this member's generated model.", show_default=False),
    ] = None,
    spec_path: Annotated[
        Path | None,
        typer.Option(
            "--spec",
            help="Of a family run: generate weights for this new architecture of the family (zero-shot); "
            "its generator section is ignored (the run's generator makes them).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Write the generated target weights as a plain state_dict (safetensors) that build_model(spec) loads, or as ONNX."""  # noqa: E501  the help text, as typer shows it
    from uhn_runtime.device import resolve_device
    from uhn_runtime.io.export import export_levels, export_onnx, export_run, generated_state_dict, load_exported
    from uhn_runtime.model.weights import SourceKind
    from uhn_runtime.train.run_dir import RunDir
    from uhn_spec import build_model

    suffix = ONNX_SUFFIX if onnx else EXPORT_SUFFIX
    if output.suffix != suffix:
        raise UHNError(f"--output: {'an ONNX' if onnx else 'an export'} file name ends in {suffix}, got {output}")
    if source not in ("uhn", "direct"):
        raise UHNError(f"--source: {source!r} is not uhn or direct")
    kind: SourceKind = "uhn" if source == "uhn" else "direct"
    if model is not None and spec_path is not None:
        raise UHNError("--model exports a member of the run's family, --spec a new architecture; give one")
    if task is not None:
        if model is not None or spec_path is not None:
            raise UHNError("--task exports a member of a multi-task run; give no --model or --spec with it")
        model = _multitask_member(run_dir, task)
    torch_device = resolve_device(device.value)
    if (model is not None or spec_path is not None) and run_dir.is_file():
        raise UHNError(f"{run_dir}: a file; --model and --spec read a run folder")
    if onnx:
        if run_dir.is_file():
            _, module = load_exported(run_dir)
        else:
            run = RunDir.open(run_dir)
            target, _ = _chosen_target(run, model, spec_path)
            module = build_model(target.spec)
            module.load_state_dict(generated_state_dict(run, kind, torch_device, target, recalibrate_bn, data_root))
        difference = export_onnx(module, output)
        typer.echo(
            f"wrote {output} ({human_bytes(output.stat().st_size)}); onnxruntime matches PyTorch to {difference:.1e}"
        )
        return
    if run_dir.is_file():
        raise UHNError(f"{run_dir}: a file; `uhn export` reads a run folder (with --onnx it also converts an export)")
    if for_module is not None:
        from uhn_runtime.io.export import export_for_module

        state = export_for_module(
            RunDir.open(run_dir), output, kind, torch_device, for_module, recalibrate_bn, data_root
        )
        count = sum(t.numel() for t in state.values())
        typer.echo(
            f"wrote {output} ({human_bytes(output.stat().st_size)}): "
            f"{len(state)} tensors of {for_module}, loaded with strict=True"
        )
        return
    if levels:
        if source != "uhn" or onnx:
            raise UHNError("--levels exports the generated chain of a recursive run: give no --source direct or --onnx")
        for path, state in export_levels(RunDir.open(run_dir), output, torch_device):
            count = sum(t.numel() for t in state.values())
            typer.echo(f"wrote {path} ({human_bytes(path.stat().st_size)}): {len(state)} tensors, {count} weights")
        return
    run = RunDir.open(run_dir)
    target, zero_shot = _chosen_target(run, model, spec_path)
    state = export_run(run, output, kind, torch_device, target, zero_shot, recalibrate_bn, data_root)
    count = sum(t.numel() for t in state.values())
    what = f" ({target.name}{', zero-shot' if zero_shot else ''})" if model or spec_path else ""
    typer.echo(f"wrote {output}{what} ({human_bytes(output.stat().st_size)}): {len(state)} tensors, {count} weights")


def _multitask_member(run_dir: Path, task: str) -> str:
    """``task`` checked against the members of the multi-task run in ``run_dir``."""
    from uhn_runtime.train.run_dir import RunDir

    if run_dir.is_file():
        raise UHNError(f"{run_dir}: a file; --task reads a multi-task run folder")
    plan = RunDir.open(run_dir).plan()
    names = [t.name for t in plan.targets]
    if plan.mode != "multitask":
        raise UHNError(f"{run_dir}: --task: not a multi-task run; export a family member with --model")
    if task not in names:
        raise UHNError(f"{run_dir}: --task: no member {task!r}; give one of {', '.join(names)}")
    return task


def _chosen_target(run: Any, model: str | None, spec_path: Path | None) -> tuple[Any, bool]:
    """(the TargetPlan to export, whether it is zero-shot): the plan's first target, the
    member ``model``, or the architecture of ``spec_path`` compiled alone. A zero-shot
    architecture outside the family's descriptor ranges gets one warning line."""
    from uhn_runtime.io.export import zero_shot_target
    from uhn_spec import load_spec

    plan = run.plan()
    if model is not None:
        return plan.target(model), False
    if spec_path is None:
        return plan.trained_target, False
    spec = load_spec(spec_path)
    fitting_budget(spec, spec_path, "compile")
    target, outside = zero_shot_target(plan, spec)
    if outside:
        typer.echo(
            f"warning: {spec_path}: outside the family's descriptor ranges (the generator extrapolates): "
            + "; ".join(outside),
            err=True,
        )
    return target, True


@command("evaluate")
def evaluate(
    path: Annotated[Path, typer.Argument(help=f"A run folder or an exported *{EXPORT_SUFFIX}.", show_default=False)],
    data_root: DataRootOption = None,
    device: DeviceOption = DEFAULT_DEVICE,
) -> None:
    """Print the test metric of a run's generated (and direct) weights or of an exported model.

    Of a family run: every evaluated member's, and each group's mean and std."""
    from uhn_runtime.device import resolve_device
    from uhn_runtime.io.evaluate_run import evaluation_lines

    for line in evaluation_lines(path, data_root, resolve_device(device.value)):
        typer.echo(line)
