"""``uhn bench``: generation and train-step speed and memory against the naive baseline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from uhn_spec.errors import UHNError
from uhn_spec.files import PLAN_SUFFIX

from .app import SetOption, command, load_target_source
from .options import DEFAULT_DEVICE, DeviceOption, bounded_option


def default_naive_max_gib() -> float:
    from uhn_tools.bench import DEFAULT_NAIVE_MAX_BYTES, GIB  # local: --help stays free of torch

    return DEFAULT_NAIVE_MAX_BYTES / GIB


# The documented ranges of bench's numbers (checked as the command line is read).
MAX_NAIVE_GIB = 1024.0
MAX_REPEATS = 100
MAX_BATCH = 65536
MAX_TARGET_SEGMENTS = 1024
MIN_MATMUL_SIZE, MAX_MATMUL_SIZE = 16, 8192


@command("bench")
def bench(
    source: Annotated[Path, typer.Argument(help=f"A plan (*{PLAN_SUFFIX}) or a spec YAML.", show_default=False)],
    # No plain default: it lives in uhn_tools.bench, which imports torch (see app.py).
    naive_max_gib: Annotated[
        float,
        bounded_option(
            "--naive-max-gib",
            0.0,
            MAX_NAIVE_GIB,
            "Skip the naive generator if its estimated peak exceeds this",
            kind=float,
            default_factory=default_naive_max_gib,
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON instead of a table.")] = False,
    repeats: Annotated[
        int, bounded_option("--repeats", 1, MAX_REPEATS, "Timed runs per case (median; after one warm-up)")
    ] = 5,
    device: DeviceOption = DEFAULT_DEVICE,
    batch: Annotated[int, bounded_option("--batch", 1, MAX_BATCH, "Target batch size of the train step")] = 256,
    precision: Annotated[
        str,
        typer.Option(
            "--precision",
            help="fp32, bf16 autocast for the matmuls, or auto (as uhn train: by the hardware and the task kind).",
        ),
    ] = "fp32",
    target: Annotated[str | None, typer.Option("--target", help="Which target of a multi-target plan.")] = None,
    naive: Annotated[
        bool, typer.Option("--naive/--no-naive", help="Also measure the naive one-batch generator.")
    ] = True,
    target_segments: Annotated[
        int | None,
        bounded_option(
            "--target-segments",
            0,
            MAX_TARGET_SEGMENTS,
            "Checkpoint the target's activations in this many segments in the train step (0: off; more than "
            "layers: one per layer; default: the spec's train.target_segments, as uhn train)",
            show_default=False,
        ),
    ] = None,
    matmul_size: Annotated[
        int | None,
        bounded_option(
            "--matmul-size",
            MIN_MATMUL_SIZE,
            MAX_MATMUL_SIZE,
            "Side of the square product that measures the matmul peak (default: 4096; 1024 where bf16 is "
            "emulated, on a CPU without AMX or AVX512-BF16)",
            show_default=False,
        ),
    ] = None,
    overrides: SetOption = None,
) -> None:
    """Measure generation speed, the train step and peak memory against the naive generator.

    Each case runs in a fresh process; generation is also reported as a fraction of the
    machine's measured matmul throughput. The train step is the trainer's (uhn train's): the
    default step and the exact one (--exact), and the naive generator's through the same step."""
    from uhn_runtime.device import resolve_device
    from uhn_tools.bench import GIB, BenchOptions, render_report, run_bench

    if precision not in ("auto", "fp32", "bf16"):
        raise UHNError(f"--precision: {precision!r}; use fp32, bf16 or auto")
    plan = load_target_source(source, overrides)
    options = BenchOptions(
        repeats=repeats,
        batch=batch,
        device=resolve_device(device.value).type,
        precision=precision,
        target=target,
        naive=naive,
        naive_max_bytes=int(naive_max_gib * GIB),
        target_segments=target_segments,
        seed=plan.target(target).spec.train.seed,
        square=matmul_size,
    )
    report = run_bench(
        plan,
        options,
        progress=lambda what: typer.echo(f"measuring {what} ...", err=True),
        notice=lambda line: typer.echo(line, err=True),
    )
    typer.echo(json.dumps(report, indent=2) if as_json else render_report(report))
