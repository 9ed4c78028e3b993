"""Generation time of two targets under one generator, measured alternately in one process.

    OMP_NUM_THREADS=1 python benchmarks/generation_pair.py A.yaml B.yaml [--repeats 5]

Both specs are compiled into one plan, so one generator (the first spec's settings, the union
of both normalisation ranges) generates both; the two are timed alternately after one warm-up
each, so that a change of machine load hits both, and the report gives the ratio of times next
to the ratio of weight counts (docs/performance.md: an imported ResNet-18 against CNN-56, and
an imported MLP against the same MLP written by hand).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from uhn_runtime.model.generator import UHNGenerator
from uhn_runtime.model.target import DeviceTarget
from uhn_spec import compile_specs, load_spec


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    plan = compile_specs([load_spec(args.first), load_spec(args.second)])
    torch.manual_seed(0)
    generator = UHNGenerator(plan.generator, plan.index_ranges, plan.structure_ranges, seed=0)
    targets = [DeviceTarget(t) for t in plan.targets]
    seconds: dict[str, list[float]] = {t.plan.name: [] for t in targets}
    with torch.no_grad():
        for round_ in range(args.repeats + 1):  # round 0 is the warm-up
            for target in targets:
                start = time.perf_counter()
                target.generate(generator)
                if round_:
                    seconds[target.plan.name].append(time.perf_counter() - start)
    names = [t.plan.name for t in targets]
    counts = {t.plan.name: t.num_params for t in targets}
    median = {name: statistics.median(s) for name, s in seconds.items()}
    report = {
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "generator": plan.generator.model_dump(),
        "num_params": counts,
        "generate_seconds": median,
        "generate_seconds_all": seconds,
        "microseconds_per_weight": {n: 1e6 * median[n] / counts[n] for n in names},
        "time_ratio": median[names[1]] / median[names[0]],
        "weight_ratio": counts[names[1]] / counts[names[0]],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
