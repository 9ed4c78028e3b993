"""Sharded generation on N processes against one: per-rank peak generator memory, step time.

    python benchmarks/distributed_bench.py specs/cifar10_cnn56.yaml --nproc 2 [--repeats 3] [--json]

One step is what training asks of the generator: generate every weight of the target with
gradients, backward from a fixed loss sum(flat * w), and (N processes) the all-reduce of the
generator's gradients that DistributedDataParallel does. The single process generates all
work units; each of the N processes its share (``uhn_runtime.train.distributed``), gathering the
rest. Every case runs in fresh processes (gloo on the CPU, one thread each, so N processes
use N cores), and its peak memory is the resident-set high-water mark above the memory held
after a warm-up step (``uhn_tools.bench.memory``: VmHWM on Linux). The report gives the per-rank
peak against the single process's and the step-time ratio, both measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from uhn_runtime.model.generation_shard import GenerationShard
from uhn_runtime.model.generator import UHNGenerator
from uhn_runtime.model.target import DeviceTarget
from uhn_runtime.train.distributed import DistContext
from uhn_spec import compile_spec, load_spec
from uhn_spec.plan import load_plan
from uhn_tools.bench.memory import current_memory, peak_memory, reset_peak_memory

CPU = torch.device("cpu")


def worker(rank: int, world: int, port: int, plan_path: str, repeats: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    plan = load_plan(Path(plan_path))
    target = DeviceTarget(plan.targets[0], CPU)
    torch.manual_seed(0)
    generator = UHNGenerator(plan.generator, plan.index_ranges, plan.structure_ranges, seed=0)
    if world > 1:
        generator.shard = GenerationShard.for_context(DistContext(rank, world))
    loss_weights = torch.randn(target.num_params, generator=torch.Generator().manual_seed(1))
    params = [p for p in generator.parameters() if p.requires_grad]

    def step() -> None:
        (target.generate(generator) * loss_weights).sum().backward()
        if world > 1:  # what DDP does with the generator's gradients
            grads = torch.cat([p.grad.reshape(-1) for p in params])  # type: ignore[union-attr]
            dist.all_reduce(grads)
        for p in params:
            p.grad = None

    step()  # warm-up: layout, feature tables, workspace
    baseline = current_memory(CPU)
    reset_peak_memory(CPU)
    seconds = []
    for _ in range(repeats):
        if world > 1:
            dist.barrier()
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    result = {
        "rank": rank,
        "peak_generator_bytes": peak_memory(CPU) - baseline,
        "step_seconds": statistics.median(seconds),
        "units": len(generator.layout(target.index, generator.spec.chunk_rows).units),
    }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    if world > 1:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_case(plan_path: Path, world: int, repeats: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(worker, args=(world, free_port(), str(plan_path), repeats, out), nprocs=world, join=True)
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    plan = compile_spec(load_spec(args.spec))
    load_before = os.getloadavg()  # the machine's load: the times mean little on a busy machine
    with tempfile.TemporaryDirectory() as tmp:
        plan_path = Path(tmp) / "plan.pt"
        plan.save(plan_path)
        single = run_case(plan_path, 1, args.repeats)[0]
        sharded = run_case(plan_path, args.nproc, args.repeats)
    worst = max(r["peak_generator_bytes"] for r in sharded)
    slowest = max(r["step_seconds"] for r in sharded)
    report = {
        "spec": str(args.spec),
        "target_params": plan.targets[0].num_params,
        "nproc": args.nproc,
        "single": single,
        "sharded": sharded,
        "peak_ratio": worst / single["peak_generator_bytes"],
        "step_time_ratio": slowest / single["step_seconds"],
        "torch": torch.__version__,
        "cpu_count": torch.multiprocessing.cpu_count(),
        "load_average_1min": {"start": load_before[0], "end": os.getloadavg()[0]},
        # Set: glibc returns freed blocks of this size or more at once, so the peak follows
        # the live tensors rather than the heap's high-water mark (docs/distributed.md).
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        mib = 2**20
        print(f"{args.spec}: {report['target_params']:,} weights, {single['units']} work units")
        print(
            f"1 process:   peak generator memory {single['peak_generator_bytes'] / mib:8.1f} MiB, "
            f"step {single['step_seconds']:.2f} s"
        )
        for r in sharded:
            print(
                f"rank {r['rank']}/{args.nproc}:  peak generator memory {r['peak_generator_bytes'] / mib:8.1f} MiB, "
                f"step {r['step_seconds']:.2f} s"
            )
        print(
            f"per-rank peak / 1 process: {report['peak_ratio']:.2f}   step time ratio: {report['step_time_ratio']:.2f}"
        )
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
