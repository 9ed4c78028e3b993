"""``uhn train``: start, resume or continue a run (``uhn export`` and ``uhn evaluate``: weights_commands.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from uhn_runtime.cpu_policy import choose_threads
from uhn_runtime.train.run_record import DEFAULT_MICRO_SHARDS, MAX_MICRO_SHARDS
from uhn_runtime.train.stop_signals import RunStopped
from uhn_spec.errors import UHNError
from uhn_spec.files import PLAN_SUFFIX

from .app import SetOption, command, load_target_source
from .options import DEFAULT_DEVICE, DataRootOption, DeviceOption, bounded_option, nonempty_path

# A second Ctrl-C abandons the run; the shell's code for "killed by SIGINT".
EXIT_ABANDONED = 130
# Another torchrun process died mid-run (LostContact): sysexits' EX_TEMPFAIL, "try again",
# here with `uhn train --resume` (docs/distributed.md).
EXIT_LOST_CONTACT = 75


class Precision(StrEnum):
    """train.precision's values, for --precision."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Mode(StrEnum):
    """What `uhn train` trains: the UHN, the target directly (the baseline), or both."""

    uhn = "uhn"
    direct = "direct"
    both = "both"


@command("train")
def train(
    source: Annotated[
        Path | None,
        typer.Argument(help="A spec YAML or a compiled plan (*.pt); omit with --resume.", show_default=False),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            parser=nonempty_path,
            metavar="DIR",
            help="Run folder, missing or empty (default: runs/<spec name>/<timestamp>).",
            show_default=False,
        ),
    ] = None,
    data_root: DataRootOption = None,
    overrides: SetOption = None,
    mode: Annotated[
        Mode | None,
        typer.Option(
            "--mode",
            help="uhn: the generator; direct: the target's own parameters (the baseline); both, one after the "
            "other. Default: both if the spec's train.compare_direct is true, else uhn.",
            show_default=False,
        ),
    ] = None,
    device: DeviceOption = DEFAULT_DEVICE,
    tensorboard: Annotated[
        bool,
        typer.Option(
            "--tensorboard", help="Also write TensorBoard event files to RUN/tensorboard (as train.tensorboard)."
        ),
    ] = False,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Continue the stopped run in this folder.", show_default=False)
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Train only this member of a family (or target of a plan), alone: the single-model run.",
            show_default=False,
        ),
    ] = None,
    shard_generation: Annotated[
        bool,
        typer.Option(
            "--shard-generation",
            help="Under torchrun: each process generates a share of the weights (generator memory / N); "
            "docs/distributed.md.",
        ),
    ] = False,
    exact: Annotated[
        bool,
        typer.Option(
            "--exact",
            help=f"Exact data parallel: the same steps, bit for bit, on 1 process or torchrun's N and on any "
            f"thread count, at a cost (each batch in {DEFAULT_MICRO_SHARDS} micro-shards; --micro-shards sets "
            "another count). Default: the fast step, which resumes exactly all the same. docs/distributed.md",
        ),
    ] = False,
    micro_shards: Annotated[
        int | None,
        bounded_option(
            "--micro-shards",
            0,
            MAX_MICRO_SHARDS,
            "Exact data parallel with this many fixed micro-shards per batch (so torchrun's N processes, up to "
            "this many, take the steps of one); 0, the default: the fast step (one process: plain; torchrun: "
            "DDP's gradient average); at most train.batch_size (a micro-shard has at least one example). "
            "docs/distributed.md",
            show_default=False,
        ),
    ] = None,
    precision: Annotated[
        Precision | None,
        typer.Option(
            "--precision",
            help="As --set train.precision=...: auto (bf16 where the hardware accelerates it: AMX, "
            "AVX512-BF16, bf16 tensor cores; and only for task kinds where bf16 keeps accuracy: "
            "docs/performance.md), fp32, bf16, or fp16 (GPU). Default: the spec's.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Train a UHN that generates the target's weights (and/or the target directly); prints the test metric.

    On a family (file or compiled plan) one UHN trains every seen member, one drawn per step,
    and reports the test metric of the evaluated seen and of the unseen members.
    Ctrl-C (or SIGTERM) saves a checkpoint after the current step; `--resume` continues from it.
    Under torchrun it trains on all processes (docs/distributed.md); rank 0 prints and writes."""
    from uhn_runtime.train.distributed import environment_context
    from uhn_runtime.train.run import TrainOptions, plan_label, resume_run, start_run
    from uhn_runtime.train.run_dir import RunDir, default_run_dir
    from uhn_runtime.train.run_tables import is_multi_model
    from uhn_spec import compile_spec

    cpu = choose_threads()
    echo = typer.echo if environment_context().is_main else (lambda *_, **__: None)
    if resume is not None:
        given = (source, out, mode, model, precision, micro_shards)
        if overrides or exact or any(option is not None for option in given):
            raise UHNError(
                "--resume DIR continues a run as it was started; give no SOURCE, --out, --set, --mode, --model, "
                "--precision, --exact or --micro-shards"
            )
        options = TrainOptions(
            device=device.value, data_root=data_root, tensorboard=tensorboard, shard_generation=shard_generation
        )
        echo(cpu.line(), err=True)
        run_root = resume
        summary = _stoppable(lambda: resume_run(resume, options), resume)
    else:
        if source is None:
            raise UHNError("give a spec or plan to train (e.g. `uhn train specs/digits_mlp.yaml`), or --resume DIR")
        if precision is not None:  # the spec's field stays the one source of truth, recorded with the run
            if source.suffix == PLAN_SUFFIX:
                raise UHNError(
                    f"--precision: {source} is a compiled plan, which keeps its spec's train.precision; give "
                    f"the spec, or recompile with `uhn compile SPEC --set train.precision={precision.value}`"
                )
            overrides = [*(overrides or []), f"train.precision={precision.value}"]
        plan = load_target_source(source, overrides, purpose="train")
        if model is not None:  # one member alone, with its own normalisation ranges
            plan = compile_spec(plan.target(model).spec)
        spec = plan.trained_target.spec
        micro_shards = chosen_micro_shards(exact, micro_shards)
        if micro_shards is not None:
            check_micro_shards(micro_shards, spec.train.batch_size, source)
        compare = spec.train.compare_direct and not is_multi_model(plan)  # a family trains no direct baseline
        chosen = mode.value if mode is not None else ("both" if compare else "uhn")
        run_root = out if out is not None else default_run_dir(plan_label(plan))
        options = TrainOptions(
            mode=chosen,  # type: ignore[arg-type]  # the Mode choice's value: "uhn", "direct" or "both"
            device=device.value,
            data_root=data_root,
            tensorboard=tensorboard,
            shard_generation=shard_generation,
        )
        if micro_shards is not None:
            options = replace(options, micro_shards=micro_shards)
        recorded = {"source": str(source), "overrides": list(overrides or []), "model": model, "cpu": cpu.record()}
        echo(cpu.line(), err=True)
        summary = _stoppable(lambda: start_run(plan, run_root, options, recorded), run_root)
    echo(result_line(summary))
    echo(f"summary: {RunDir(run_root).summary_path}")


def chosen_micro_shards(exact: bool, micro_shards: int | None) -> int | None:
    """The micro-shards a new run sums (None: TrainOptions' default, the fast step): --exact
    alone takes DEFAULT_MICRO_SHARDS; beside --micro-shards N it asks for N > 0."""
    if not exact:
        return micro_shards
    if micro_shards == 0:
        raise UHNError("--exact --micro-shards 0: 0 micro-shards is the fast, inexact step; give one of the two")
    return DEFAULT_MICRO_SHARDS if micro_shards is None else micro_shards


def check_micro_shards(micro_shards: int, batch_size: int, source: Path) -> None:
    """Refuse more micro-shards than a batch has examples: the extra ones are empty, yet each
    costs a pass of the step (a count like 10^9 stalls training)."""
    if micro_shards > batch_size:
        raise UHNError(
            f"--micro-shards: {micro_shards} is more than train.batch_size {batch_size} of {source}; "
            f"give 0 to {batch_size} (each micro-shard holds at least one example of the batch)"
        )


def exit_now(code: int) -> NoReturn:
    """Exit at once, skipping interpreter shutdown: after a peer died, gloo's threads can abort
    the process as it shuts down ("terminate called without an active exception": exit -6
    instead of ``code``, seen under load after the lost-contact line was printed)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _stoppable(action: Callable[[], dict[str, Any]], run_root: Path) -> dict[str, Any]:
    """Run ``action``; a stop on a signal, or a torchrun peer that died, ends the command
    with the line that continues it."""
    from uhn_runtime.train.distributed import LostContact
    from uhn_runtime.train.run_dir import RunDir

    again = f"continue with `uhn train --resume {run_root}`"
    try:
        return action()
    except RunStopped as stopped:
        typer.echo(f"{stopped}; {again}", err=True)
        raise typer.Exit(stopped.exit_code) from None
    except LostContact as lost:
        # A default folder's name holds rank 0's clock; this rank's guess may be a second off.
        named = run_root if RunDir(run_root).info_path.is_file() else "RUN (the run folder rank 0 named)"
        typer.echo(f"{lost}; resume with `uhn train --resume {named}`", err=True)
        exit_now(EXIT_LOST_CONTACT)
    except KeyboardInterrupt:
        started = RunDir(run_root).info_path.is_file()
        typer.echo(
            f"abandoned; the last checkpoint stays; {again}" if started else "interrupted before the run started",
            err=True,
        )
        raise typer.Exit(EXIT_ABANDONED) from None


def result_line(summary: dict[str, Any]) -> str:
    if "tasks" in summary:  # a multi-task run: each member's own metric
        rows = [f"{name} {row['metric']} {row['uhn']:.4f}" for name, row in summary["tasks"].items()]
        return "test: " + "  ".join(rows) + f"  ({summary['seconds']:.0f} s)"
    parts = [f"test {summary['metric']}:"]
    if "seen" in summary:  # a family run
        for group in ("seen", "unseen"):
            stats = summary[group]
            if stats["models"]:
                parts.append(f"{group} {stats['mean']:.4f} +- {stats['std']:.4f} ({stats['models']} models)")
        return "  ".join(parts) + f"  ({summary['seconds']:.0f} s)"
    for kind in ("uhn", "direct"):
        if summary.get(kind) is not None:
            seconds = summary["phase_seconds"].get(kind)
            parts.append(f"{kind} {summary[kind]:.4f} ({seconds:.0f} s)")
    return "  ".join(parts)
