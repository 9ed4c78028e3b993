"""Training commands: ``uhn train``, ``uhn export`` and ``uhn evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from uhn_spec.errors import UHNError

from .main import SetOption, command, fail, human_bytes, load_target_source

EXPORT_SUFFIX = ".safetensors"

DataRootOption = Annotated[
    str | None,
    typer.Option("--data-root", help="Folder with the datasets (default: $UHN_DATA, else ~/.cache/uhn/data)."),
]
DeviceOption = Annotated[str, typer.Option("--device", help="cpu, cuda or auto (CUDA when available).")]


@command("train")
def train(
    source: Annotated[
        Path | None, typer.Argument(help="A spec YAML or a compiled plan (*.pt); omit with --resume.", show_default=False)
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run folder (default: runs/<spec name>/<timestamp>).", show_default=False)
    ] = None,
    data_root: DataRootOption = None,
    overrides: SetOption = None,
    direct: Annotated[bool, typer.Option("--direct", help="Train only the target's own parameters (the baseline).")] = False,
    with_direct: Annotated[
        bool | None,
        typer.Option(
            "--with-direct/--without-direct",
            help="Also train the direct baseline in this run (default: the spec's train.compare_direct).",
            show_default=False,
        ),
    ] = None,
    device: DeviceOption = "auto",
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Continue the killed run in this folder.", show_default=False)
    ] = None,
) -> None:
    """Train a UHN that generates the target's weights (and/or the target directly); prints the test metric."""
    from uhn_runtime.run_dir import RunDir, default_run_dir
    from uhn_runtime.train import TrainOptions, resume_run, start_run

    if resume is not None:
        if source is not None or overrides or out is not None or direct or with_direct is not None:
            raise UHNError("--resume DIR continues a run as it was started; give no SOURCE, --out, --set or mode flags")
        options = TrainOptions(device=device, data_root=data_root)
        run_root = resume
        summary = _interruptible(lambda: resume_run(resume, options), resume)
    else:
        if source is None:
            raise UHNError("give a spec or plan to train (e.g. `uhn train specs/digits_mlp.yaml`), or --resume DIR")
        if direct and with_direct:
            raise UHNError("--direct trains only the baseline; --with-direct trains both: give one")
        plan = load_target_source(source, overrides, purpose="train")
        spec = plan.targets[0].spec
        both = with_direct if with_direct is not None else spec.train.compare_direct
        mode = "direct" if direct else ("both" if both else "uhn")
        run_root = out if out is not None else default_run_dir(spec.name)
        options = TrainOptions(mode=mode, device=device, data_root=data_root)
        recorded = {"source": str(source), "overrides": list(overrides or [])}
        summary = _interruptible(lambda: start_run(plan, run_root, options, recorded), run_root)
    typer.echo(result_line(summary))
    typer.echo(f"summary: {RunDir(run_root).summary_path}")


def _interruptible(action: Any, run_root: Path) -> dict[str, Any]:
    try:
        return action()
    except KeyboardInterrupt:
        raise fail(f"interrupted; continue with `uhn train --resume {run_root}`") from None


def result_line(summary: dict[str, Any]) -> str:
    parts = [f"test {summary['metric']}:"]
    for kind in ("uhn", "direct"):
        if summary.get(kind) is not None:
            seconds = summary["phase_seconds"].get(kind)
            parts.append(f"{kind} {summary[kind]:.4f} ({seconds:.0f} s)")
    return "  ".join(parts)


@command("export")
def export(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help=f"File to write (*{EXPORT_SUFFIX}).", show_default=False)],
    source: Annotated[str, typer.Option("--source", help="Which weights: uhn (generated) or direct.")] = "uhn",
    device: DeviceOption = "auto",
) -> None:
    """Write the generated target weights as a plain state_dict (safetensors) that build_model(spec) loads."""
    from uhn_runtime.export import export_run
    from uhn_runtime.run_dir import RunDir
    from uhn_runtime.train import resolve_device

    if output.suffix != EXPORT_SUFFIX:
        raise UHNError(f"--output: an export file name ends in {EXPORT_SUFFIX}, got {output}")
    if source not in ("uhn", "direct"):
        raise UHNError(f"--source: {source!r} is not uhn or direct")
    state = export_run(RunDir.open(run_dir), output, source, resolve_device(device))  # type: ignore[arg-type]
    count = sum(t.numel() for t in state.values())
    typer.echo(f"wrote {output} ({human_bytes(output.stat().st_size)}): {len(state)} tensors, {count} weights")


@command("evaluate")
def evaluate(
    path: Annotated[Path, typer.Argument(help=f"A run folder or an exported *{EXPORT_SUFFIX}.", show_default=False)],
    data_root: DataRootOption = None,
    device: DeviceOption = "auto",
) -> None:
    """Print the test metric of a run's generated (and direct) weights or of an exported model."""
    from uhn_runtime.data import load_task_data
    from uhn_runtime.evaluate import evaluate_module, evaluate_source
    from uhn_runtime.export import load_exported, load_trained_source
    from uhn_runtime.run_dir import RunDir
    from uhn_runtime.train import resolve_device

    torch_device = resolve_device(device)
    if path.is_dir():
        run = RunDir.open(path)
        kinds = [k for k in ("uhn", "direct") if run.checkpoint_path(k).is_file()]
        if not kinds:
            raise UHNError(f"{path}: no checkpoints yet; train with `uhn train SPEC --out {path}`")
        data = None
        for kind in kinds:
            weights, target, precision = load_trained_source(run, kind, torch_device)  # type: ignore[arg-type]
            data = data or load_task_data(target.plan.spec.task, data_root or run.info().get("data_root"))
            value = evaluate_source(weights, target, data, "test", precision)
            typer.echo(f"{kind}: test {data.metric} {value:.4f}")
        return
    spec, model = load_exported(path, torch_device)
    data = load_task_data(spec.task, data_root)
    value = evaluate_module(model, data, "test", torch_device)
    typer.echo(f"{path}: test {data.metric} {value:.4f}")
