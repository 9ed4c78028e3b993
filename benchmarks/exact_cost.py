"""What exact data parallel costs: task-phase step time of the exact path against DDP's path
(and against the generator as it was before, with fused LayerNorm and bf16 weight gradients),
measured in one process, the variants' steps interleaved.

    python benchmarks/exact_cost.py specs/digits_mlp.yaml [--rounds 30] [--micro-shards 8] [--data-root DIR] [--json]
    torchrun --standalone --nproc-per-node 2 benchmarks/exact_cost.py specs/digits_mlp.yaml

Each variant is a training phase of its own (``uhn_runtime.train.trainer.Trainer``, the uhn source, the
spec's precision resolved as ``uhn train`` resolves it), fed the same batches; one round takes
one step of each variant, in turn, so load that comes and goes touches all of them alike.
Reported: each variant's median step time and its ratio to the exact path's. Under torchrun
every rank times its own steps (the collectives keep them in step); rank 0 reports.

Variants: ``exact`` (the default: ``--micro-shards`` fixed micro-shards, gradients summed in
order), ``ddp`` (micro_shards 0: DistributedDataParallel's average, one target pass over the
rank's share), ``ddp_fused_layer_norm`` (``ddp`` with the generator's residual blocks as they
were before exact data parallel: fused LayerNorm, autocast's bf16 weight gradients).
MKL's strict mode (``MKL_CBWR``, set by the CLI) is per process: compare it by running this
script with ``MKL_CBWR=AUTO`` and ``MKL_CBWR=AUTO,STRICT`` (separate runs).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from uhn_runtime.data import load_task_data
from uhn_runtime.model import generator as generator_module
from uhn_runtime.train.distributed import DEFAULT_MICRO_SHARDS, distributed_session
from uhn_runtime.train.draws import epoch_seed
from uhn_runtime.train.precision import Precision
from uhn_runtime.train.progress import Progress
from uhn_runtime.train.run import TrainOptions, new_sampler, new_trainer
from uhn_runtime.train.run_dir import RunDir, cpu_model
from uhn_runtime.train.stop_signals import StopSignals
from uhn_spec import compile_spec, load_spec

CPU = torch.device("cpu")


def fused_residual_block(x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
    """The residual block before exact data parallel (fused LayerNorm, F.linear)."""
    n1w, n1b, l1w, l1b, n2w, n2b, l2w, l2b = params
    eps = generator_module.LAYER_NORM_EPS
    h = F.linear(F.layer_norm(torch.relu(x), n1w.shape, n1w, n1b, eps), l1w, l1b)
    h = F.linear(F.layer_norm(torch.relu(h), n2w.shape, n2w, n2b, eps), l2w, l2b)
    return x + h


@contextlib.contextmanager
def generator_blocks(variant: str) -> Iterator[None]:
    current = generator_module.residual_block
    if variant == "ddp_fused_layer_norm":
        generator_module.residual_block = fused_residual_block
    try:
        yield
    finally:
        generator_module.residual_block = current


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3, help="rounds left out of the figures")
    parser.add_argument("--micro-shards", type=int, default=DEFAULT_MICRO_SHARDS)
    parser.add_argument(
        "--precision", choices=("auto", "fp32", "bf16"), default=None, help="instead of the spec's train.precision"
    )
    parser.add_argument("--data-root", default=None, help="where the real datasets are (as uhn train --data-root)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    plan = compile_spec(load_spec(args.spec))
    target = plan.targets[0]
    cfg = target.spec.train
    data = load_task_data(target.spec.task, args.data_root)
    precision = Precision.resolve(args.precision or cfg.precision, CPU, plan.task_types)
    variants = {"exact": args.micro_shards, "ddp": 0, "ddp_fused_layer_norm": 0}
    times: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp, distributed_session("cpu") as dist:
        phases = {}
        for name, micro_shards in variants.items():
            root = Path(tmp) / f"{name}_rank{dist.rank}"
            RunDir.create(root, plan, {"mode": "uhn"}, world_size=dist.world_size)
            options = TrainOptions(mode="uhn", device="cpu", micro_shards=micro_shards)
            sampler = new_sampler(plan, data, CPU, dist)
            phases[name] = new_trainer(
                "uhn", RunDir.open(root), sampler, precision, options, Progress(io.StringIO()), StopSignals(), dist
            )

        def batches() -> Iterator[Any]:
            epoch = 0
            while True:
                yield from data.train_batches(cfg.batch_size, epoch_seed(cfg.seed, epoch))
                epoch += 1

        for step, batch in zip(range(args.rounds + args.warmup), batches()):
            for name, phase in phases.items():
                with generator_blocks(name):
                    start = time.perf_counter()
                    phase.train_step(step, 0, [batch])
                    times[name].append(time.perf_counter() - start)
        medians = {name: statistics.median(t[args.warmup :]) for name, t in times.items()}
        report = {
            "spec": str(args.spec),
            "precision": precision.name,
            "world_size": dist.world_size,
            "threads": torch.get_num_threads(),
            "micro_shards": args.micro_shards,
            "rounds": args.rounds,
            "mkl_cbwr": os.environ.get("MKL_CBWR"),
            "cpu": cpu_model(),
            "load_average_1min": os.getloadavg()[0],
            "median_step_seconds": medians,
            "ratio_to_exact": {name: medians[name] / medians["exact"] for name in medians},
        }
        if dist.is_main:
            if args.json:
                print(json.dumps(report, indent=2))
            else:
                for name in variants:
                    print(
                        f"{name:22s} {medians[name] * 1e3:8.1f} ms/step  x{report['ratio_to_exact'][name]:.3f} of exact"
                    )
                print(
                    f"{precision.name}, {dist.world_size} process(es) x {report['threads']} thread(s), "
                    f"load {report['load_average_1min']:.1f}"
                )


if __name__ == "__main__":
    main()
