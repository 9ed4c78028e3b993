"""Compile benchmark: how long `uhn compile` takes for a large spec and how big the plan is.

    python benchmarks/compile_bench.py [SPEC] [--repeats 5]

Times what ``uhn compile`` does before writing: read the file, render the template, validate
and compile (``uhn_cli.main.load_target_source``); the plan write is timed separately. Prints
the medians of wall-clock and process CPU time (CPU time is less disturbed by other work on a
shared machine), the plan file size and the parameter count. Targets for CIFAR-10 CNN-56
(850,986 params): compile < 1 s and plan < 20 MB on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from uhn_cli.main import load_target_source

T = TypeVar("T")

DEFAULT_SPEC = Path(__file__).resolve().parent.parent / "specs" / "cifar10_cnn56.yaml"


def timed(func: Callable[[], T], repeats: int) -> tuple[float, float, T]:
    """Median wall-clock seconds, median CPU seconds, and the last result."""
    wall, cpu = [], []
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        result = func()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", type=Path, default=DEFAULT_SPEC)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    load_target_source(args.spec)  # warm-up: lazy imports and first-call overheads
    compile_wall, compile_cpu, plan = timed(lambda: load_target_source(args.spec), args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plan.pt"
        save_wall, save_cpu, _ = timed(lambda: plan.save(path), args.repeats)
        size = path.stat().st_size
    num_params = sum(t.num_params for t in plan.targets)
    print(f"spec:          {args.spec}")
    print(f"params:        {num_params}")
    print(f"compile:       {compile_wall:.3f} s wall, {compile_cpu:.3f} s CPU (medians of {args.repeats})")
    print(f"save:          {save_wall:.3f} s wall, {save_cpu:.3f} s CPU (medians of {args.repeats})")
    print(f"plan size:     {size / 1e6:.1f} MB ({size / num_params:.1f} bytes per param)")


if __name__ == "__main__":
    main()
