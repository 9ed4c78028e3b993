"""Compile benchmark: how long compiling takes and how big the plan is, for one large spec and
for a synthetic many-target family.

    python benchmarks/compile_bench.py [--spec SPEC] [--targets 1000] [--repeats 5] [--json] [--out FILE]

* ``single``: the spec (default CIFAR-10 CNN-56, 850,986 params): what ``uhn compile`` does
  before writing (read, render, validate, compile; median of --repeats), the plan write, and
  the plan file's size. Targets (issue #10): compile < 0.3 s, plan < 1 MB.
* ``family``: --targets CNN width variants rendered from ``specs/_families/cnn.j2`` (6 convs
  per stage, stage widths drawn as reference-facts §9 "width": {16..32}, {32..64}, {64..128} in
  steps of 4; 269k-1.07M weights each) compiled into one plan: seconds to render and validate
  the specs and, separately, to compile them; plan file MB; the process's peak resident memory
  over both (Linux VmHWM, reset before; with what was resident before). Targets: compile
  < 30 s, plan < 50 MB, peak < 1 GiB.

Prints a summary, or with --json the report as JSON; --out also writes the JSON (e.g. under
benchmarks/results/). Wall-clock and CPU seconds are both reported: CPU time is less disturbed
by other work on a shared machine. Say the machine and its load wherever a figure is quoted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from uhn_runtime.train.run_dir import atomic_write_text
from uhn_spec import ExperimentSpec, Plan, compile_spec, compile_specs, load_spec, spec_from_text
from uhn_tools.bench.memory import current_memory, device_name, peak_memory, reset_peak_memory

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = REPO_ROOT / "specs" / "cifar10_cnn56.yaml"
CPU = torch.device("cpu")
MB = 1e6
# Per-stage width choices of the paper's CNN "width" family (reference-facts §9).
STAGE_WIDTHS = (range(16, 33, 4), range(32, 65, 4), range(64, 129, 4))
FAMILY_TEMPLATE = """\
{% from "_families/cnn.j2" import cnn_layers %}
name: {{ name }}
family: cnn
cnn_stage_num: 4
task:
  dataset: cifar10
layers:
{{ cnn_layers(in_channels=3, per_stage=6, widths=widths) }}
"""


def timed(func: Callable[[], T], repeats: int) -> tuple[float, float, T]:
    """Median wall-clock seconds, median CPU seconds, and the last result."""
    wall, cpu = [], []
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        result = func()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu), result


def saved_size(plan: Plan) -> tuple[float, int]:
    """Seconds to write the plan, and its file size in bytes."""
    with tempfile.TemporaryDirectory(prefix="uhn-compile-bench-") as tmp:
        path = Path(tmp) / "plan.pt"
        start = time.perf_counter()
        plan.save(path)
        return time.perf_counter() - start, path.stat().st_size


def bench_single(spec_path: Path, repeats: int) -> dict[str, Any]:
    def compile_once() -> Plan:
        return compile_spec(load_spec(spec_path), source_text=spec_path.read_text())

    compile_once()  # warm-up: lazy imports and first-call overheads
    wall, cpu, plan = timed(compile_once, repeats)
    save_seconds, size = saved_size(plan)
    return {
        "spec": str(spec_path),
        "num_params": plan.targets[0].num_params,
        "num_tensors": plan.targets[0].index.num_tensors,
        "compile_seconds": wall,
        "compile_cpu_seconds": cpu,
        "repeats": repeats,
        "save_seconds": save_seconds,
        "plan_bytes": size,
    }


def family_widths(count: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.choice(list(choices)) for choices in STAGE_WIDTHS] for _ in range(count)]


def family_specs(widths: list[list[int]]) -> list[ExperimentSpec]:
    where = REPO_ROOT / "specs" / "family.yaml"  # includes resolve in specs/
    return [
        spec_from_text(FAMILY_TEMPLATE, where, variables={"name": f"cnn_width_{i}", "widths": w})
        for i, w in enumerate(widths)
    ]


def family_source(widths: list[list[int]]) -> str:
    """What the plan records as its source: the template and every target's widths."""
    return FAMILY_TEMPLATE + "".join(f"# cnn_width_{i}: widths {w}\n" for i, w in enumerate(widths))


def bench_family(count: int, seed: int) -> dict[str, Any]:
    widths = family_widths(count, seed)
    compile_specs(family_specs(widths[:2]), family_source(widths[:2]))  # warm-up
    resident_before = current_memory(CPU)
    reset_peak_memory(CPU)
    render_wall, render_cpu, specs = timed(lambda: family_specs(widths), 1)
    wall, cpu, plan = timed(lambda: compile_specs(specs, family_source(widths)), 1)
    peak = peak_memory(CPU)
    save_seconds, size = saved_size(plan)
    params = [t.num_params for t in plan.targets]
    return {
        "targets": count,
        "seed": seed,
        "num_params_min": min(params),
        "num_params_max": max(params),
        "num_params_total": sum(params),
        "render_validate_seconds": render_wall,
        "render_validate_cpu_seconds": render_cpu,
        "compile_seconds": wall,
        "compile_cpu_seconds": cpu,
        "save_seconds": save_seconds,
        "plan_bytes": size,
        "peak_memory_bytes": peak,
        "resident_before_bytes": resident_before,
    }


def render(report: dict[str, Any]) -> str:
    single, family = report["single"], report["family"]
    lines = [
        f"machine: {report['machine']}, load average {report['load_average']}",
        f"single: {single['spec']} ({single['num_params']:,} params, {single['num_tensors']} tensors)",
        f"  compile  {single['compile_seconds']:.3f} s wall, "
        f"{single['compile_cpu_seconds']:.3f} s CPU (median of {single['repeats']})",
        f"  save     {single['save_seconds']:.3f} s; plan {single['plan_bytes'] / MB:.3f} MB",
    ]
    if family is not None:
        lines += [
            f"family: {family['targets']} CNN width variants "
            f"({family['num_params_min']:,}-{family['num_params_max']:,} params, "
            f"{family['num_params_total']:,} in all)",
            f"  specs    {family['render_validate_seconds']:.1f} s wall, "
            f"{family['render_validate_cpu_seconds']:.1f} s CPU "
            "(render the template and validate, per target)",
            f"  compile  {family['compile_seconds']:.1f} s wall, "
            f"{family['compile_cpu_seconds']:.1f} s CPU (compile_specs into one plan)",
            f"  save     {family['save_seconds']:.1f} s; plan {family['plan_bytes'] / MB:.1f} MB",
            f"  memory   peak {family['peak_memory_bytes'] / 2**30:.2f} GiB resident "
            f"({family['resident_before_bytes'] / 2**30:.2f} GiB before compiling)",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--targets", type=int, default=1000, help="family size; 0 skips the family")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON report here")
    args = parser.parse_args()

    report = {
        "machine": device_name(CPU),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "single": bench_single(args.spec, args.repeats),
        "family": bench_family(args.targets, args.seed) if args.targets > 0 else None,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    text = json.dumps(report, indent=2)
    if args.out is not None:
        atomic_write_text(args.out, text + "\n")
    print(text if args.json else render(report))


if __name__ == "__main__":
    main()
