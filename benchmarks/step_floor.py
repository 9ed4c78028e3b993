"""How close the trainer's default step comes to its arithmetic floor, and so how high its ratio
to the naive generator's step can go on this machine (issue #30's "default step >= 3.5x").

    OMP_NUM_THREADS=1 python benchmarks/step_floor.py specs/mnist_mlp.yaml --naive \
        --json benchmarks/results/step_floor_mnist_mlp_nt1.json

The floor: per generated weight, the input Linear(2m, d)'s multiply-adds twice (its forward
and its weight gradient; the Fourier features are constants, so no input gradient) and the
tail's (residual blocks' Linear(d, d) layers and the head) three times (forward, input
gradient, weight gradient), at the machine's fp32 matmul rate measured in the same process
(4096^3). The target's own forward and backward, LayerNorm, activations and the optimiser are
left out, so no exact step can be faster: naive step / floor is the highest ratio any step of
this math reaches here. One process measures, in order: the matmul rate, the default step
(``Trainer.train_step``, timed by `uhn bench`'s own ``measure``: the median after a warm-up), a profile of
``--profile-steps`` steps grouped into GEMMs, LayerNorm and the rest, and with ``--naive`` the
naive generator's step through the same trainer. The environment is the CLI's (MKL strict
reproducibility, the OpenMP wait policy), set before torch loads.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from pathlib import Path
from typing import Any

from uhn_runtime.cpu_policy import set_openmp_env, set_reproducible_env

set_openmp_env()
set_reproducible_env()

import torch  # noqa: E402  (after the environment, as the CLI)
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from uhn_runtime.train.precision import Precision  # noqa: E402
from uhn_runtime.train.run_dir import cpu_model  # noqa: E402
from uhn_spec import compile_spec, load_spec  # noqa: E402
from uhn_spec.files import atomic_write_text  # noqa: E402
from uhn_spec.spec import GeneratorSpec  # noqa: E402
from uhn_tools.bench.flops import measure_matmul, useful_flops_per_weight  # noqa: E402
from uhn_tools.bench.training import BenchTrainer, bench_trainer  # noqa: E402
from uhn_tools.bench.worker import measure as measure_step  # noqa: E402

CPU = torch.device("cpu")
GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
LAYER_NORM_OPS = ("aten::native_layer_norm", "aten::native_layer_norm_backward")
TARGET_RATIO = 3.5  # issue #30: default step >= 3.5x the naive generator's


def floor_flops_per_weight(spec: GeneratorSpec) -> int:
    """The multiply-adds (x2) a train step must do per generated weight: the generator's useful
    FLOPs (``uhn bench``'s) three times, less the input Linear's input gradient (see the module doc)."""
    return 3 * useful_flops_per_weight(spec) - 2 * (2 * spec.index_freqs * spec.hidden)


def median_step(bench: BenchTrainer, steps: itertools.count, num_weights: int, repeats: int) -> float:
    """The median seconds of ``repeats`` train steps after a warm-up, as `uhn bench` times them."""
    return measure_step(lambda: bench.step(next(steps)), CPU, num_weights, repeats)["seconds"]


def profile_shares(bench: BenchTrainer, steps: itertools.count, count: int) -> dict[str, float]:
    """Self CPU time of ``count`` steps by kind of operator, as fractions of their sum."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(count):
            bench.step(next(steps))
    kinds = {"gemm": 0.0, "layer_norm": 0.0, "other": 0.0}
    for event in prof.key_averages():
        kind = "gemm" if event.key in GEMM_OPS else "layer_norm" if event.key in LAYER_NORM_OPS else "other"
        kinds[kind] += event.self_cpu_time_total
    total = sum(kinds.values())
    return {kind: value / total for kind, value in kinds.items()}


def measure(spec_path: str, repeats: int, profile_steps: int, naive: bool) -> dict[str, Any]:
    plan = compile_spec(load_spec(spec_path))
    precision = Precision.resolve("fp32", CPU, plan.task_types)
    matmul = measure_matmul(CPU, precision, plan.generator, repeats)
    num_weights = plan.trained_target.num_params
    flops_per_weight = floor_flops_per_weight(plan.generator)
    floor = num_weights * flops_per_weight / matmul["square_flops_per_s"]
    with bench_trainer(plan, 256, CPU, precision) as bench:
        steps = itertools.count()
        step = median_step(bench, steps, num_weights, repeats)
        shares = profile_shares(bench, steps, profile_steps)
    record: dict[str, Any] = {
        "spec": spec_path,
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average": [round(os.getloadavg()[0], 2)],
        "num_weights": num_weights,
        "matmul_flops_per_s": matmul["square_flops_per_s"],
        "floor_flops_per_weight": flops_per_weight,
        "floor_seconds": floor,
        "step_seconds": step,
        "floor_fraction": floor / step,
        "profile_shares": shares,
    }
    if naive:
        with bench_trainer(plan, 256, CPU, precision, naive=True) as bench:
            naive_step = median_step(bench, itertools.count(), num_weights, repeats)
        record |= {
            "naive_step_seconds": naive_step,
            "step_vs_naive": naive_step / step,
            "highest_ratio": naive_step / floor,
            "step_seconds_for_target_ratio": naive_step / TARGET_RATIO,
        }
    record["load_average"].append(round(os.getloadavg()[0], 2))
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile-steps", type=int, default=2)
    parser.add_argument("--naive", action="store_true", help="also time the naive generator's step")
    parser.add_argument("--json", type=Path, help="write the record here")
    args = parser.parse_args()
    record = measure(args.spec, args.repeats, args.profile_steps, args.naive)
    text = json.dumps(record, indent=1) + "\n"
    if args.json:
        atomic_write_text(args.json, text)
    print(text, end="")


if __name__ == "__main__":
    main()
