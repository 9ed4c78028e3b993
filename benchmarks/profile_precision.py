"""Where generation's time goes, per precision: torch.profiler over generation of a spec's
target, forward (no gradients) and forward + backward (as in a train step), one process.

    OMP_NUM_THREADS=1 python benchmarks/profile_precision.py specs/cifar10_cnn20.yaml \
        --precision bf16 --precision fp32 --repeats 2 --out benchmarks/results/profile_cnn20.json

Prints, per precision and pass, the wall time (median of the repeats, after one warm-up)
and the top operators by self CPU time; ``--out`` also writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from uhn_runtime.model.generator import UHNGenerator
from uhn_runtime.model.target import DeviceTarget
from uhn_runtime.train.precision import Precision
from uhn_spec import compile_spec, load_spec

CPU = torch.device("cpu")
TOP = 12


def timed_and_profiled(step, repeats: int) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    step()  # warm-up: feature tables, work units, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    top = [
        {
            "op": e.key,
            "self_ms": e.self_cpu_time_total / 1e3,
            "fraction": e.self_cpu_time_total / total,
            "calls": e.count,
        }
        for e in events[:TOP]
    ]
    return {"seconds": statistics.median(times), "times": times, "profiled_self_ms": total / 1e3, "top": top}


def profile_precision(target: DeviceTarget, generator: UHNGenerator, name: str, repeats: int) -> dict[str, Any]:
    precision = Precision.resolve(name, CPU, ())  # type: ignore[arg-type]  # fp32 or bf16: no task kind needed
    probe = torch.randn(target.num_params, generator=torch.Generator().manual_seed(0))

    def forward() -> None:
        with torch.no_grad(), precision.autocast():
            target.generate(generator)

    def forward_backward() -> None:
        with precision.autocast():
            weights = target.generate(generator)
        (weights.float() * probe).sum().backward()
        generator.zero_grad(set_to_none=True)

    return {
        "precision": precision.name,
        "forward": timed_and_profiled(forward, repeats),
        "forward_backward": timed_and_profiled(forward_backward, repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("spec", type=Path)
    parser.add_argument("--precision", action="append", choices=["fp32", "bf16"], required=True)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    plan = compile_spec(load_spec(args.spec))
    target = DeviceTarget(plan.trained_target, CPU)
    generator = UHNGenerator(plan.generator, plan.index_ranges, plan.structure_ranges, seed=0)
    report: dict[str, Any] = {
        "spec": str(args.spec),
        "num_params": target.num_params,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average_before": list(os.getloadavg()),
        "runs": [profile_precision(target, generator, name, args.repeats) for name in args.precision],
    }
    report["load_average_after"] = list(os.getloadavg())
    for run in report["runs"]:
        for pass_name in ("forward", "forward_backward"):
            result = run[pass_name]
            print(f"{run['precision']} {pass_name}: {result['seconds']:.3f} s (median of {result['times']})")
            for row in result["top"]:
                print(f"  {row['op']:<40} {row['self_ms']:9.1f} ms {row['fraction']:6.1%} {row['calls']:6d} calls")
    print(
        f"threads {report['threads']}, load average before {report['load_average_before']}, "
        f"after {report['load_average_after']}"
    )
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
