"""Generation time of an imported ResNet-18 against CIFAR CNN-56, measured in one process.

    OMP_NUM_THREADS=1 python benchmarks/resnet18_generation.py RESNET18.yaml [--repeats 1]

RESNET18.yaml comes from `uhn import tests/import_models/models.py:resnet18 --input-shape
3,32,32 --dataset cifar10 -o RESNET18.yaml`. Both targets use the same generator (the paper's
large UHN, m 2048, d 128); the two are timed alternately (after one warm-up each) so that a
change of machine load hits both, and the report is the ratio of times next to the ratio of
weight counts.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from uhn_runtime.model.generator import UHNGenerator
from uhn_runtime.model.target import DeviceTarget
from uhn_spec import compile_specs, load_spec

CNN56 = Path(__file__).resolve().parent.parent / "specs" / "cifar10_cnn56.yaml"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("resnet18", type=Path)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    specs = [load_spec(CNN56), load_spec(args.resnet18)]
    plan = compile_specs(specs)
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
    median = {name: sorted(s)[len(s) // 2] for name, s in seconds.items()}
    report = {
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "num_params": counts,
        "generate_seconds": median,
        "weights_per_second": {n: counts[n] / median[n] for n in names},
        "time_ratio": median[names[1]] / median[names[0]],
        "weight_ratio": counts[names[1]] / counts[names[0]],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
