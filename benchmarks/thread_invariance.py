"""Which parts of one training step change with the thread count: run ``record`` once per
thread count, then ``compare`` the two files (what docs/distributed.md, "What is exact",
reports for the digits MLP).

    OMP_NUM_THREADS=1 python benchmarks/thread_invariance.py record t1.pt specs/digits_mlp.yaml
    OMP_NUM_THREADS=2 python benchmarks/thread_invariance.py record t2.pt specs/digits_mlp.yaml
    python benchmarks/thread_invariance.py compare t1.pt t2.pt

``record`` runs, in fp32 and under bf16 autocast: the generator's forward (the generated
weights) and its backward from a fixed random gradient (every generator parameter's
gradient), the target's loss gradient with respect to fixed weights on one random batch
(the first training batch of 256, whole and in 8 micro-shards) and one AdamW step. Set ``MKL_CBWR`` as the CLI does
(``AUTO,STRICT``) or not, to see what MKL's strict mode changes: torch reads it as it loads.
``compare`` prints, per part (and per generator parameter that differs), whether the two
runs agree bit for bit and the largest difference relative to the tensor's largest value.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from uhn_runtime.data import Batch, load_task_data
from uhn_runtime.model.target import DeviceTarget
from uhn_runtime.model.weights import make_source
from uhn_runtime.train.optim import make_adamw
from uhn_spec import compile_spec, load_spec
from uhn_spec.metrics import METRICS

BATCH = 256
MICRO_SHARDS = 8


def record(out: Path, spec: Path, data_root: str | None) -> None:
    plan = compile_spec(load_spec(spec))
    target = DeviceTarget(plan.targets[0])
    data = load_task_data(target.plan.spec.task, data_root)
    batch = next(iter(data.train_batches(BATCH, 0)))
    if batch.node_mask is not None or batch.edge_index is not None:
        sys.exit("record: a batched task, please (a graph task has one full-graph batch)")
    draws = torch.Generator().manual_seed(1)
    result: dict[str, Any] = {"threads": torch.get_num_threads()}
    for precision in ("fp32", "bf16"):
        source = make_source("uhn", plan, target, 0)
        names = [name for name, _ in source.named_parameters()]
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
        with autocast:
            flat = source.flat(target)
        result[f"{precision} generated weights"] = flat.detach().clone()
        flat.backward(torch.randn(flat.shape, generator=draws))
        result[f"{precision} generator gradients"] = {n: p.grad.clone() for n, p in zip(names, source.parameters())}
        weights = torch.linspace(-0.1, 0.1, target.num_params).requires_grad_()  # the same in every run
        count = batch.targets.shape[0]
        for size in (count, -(-count // MICRO_SHARDS)):
            grads = []
            for lo in range(0, count, size):
                part = micro_batch(batch, lo, lo + size)
                with autocast:
                    loss = METRICS[data.metric].loss(*part.select(target.forward(weights, **part.model_kwargs())))
                grads.append(torch.autograd.grad(loss, weights)[0])
            result[f"{precision} target gradient, batches of {size}"] = torch.stack(grads)
        optimizer = make_adamw(source.parameters(), 1e-3)
        optimizer.step()
        result[f"{precision} after one AdamW step"] = {
            n: p.detach().clone() for n, p in zip(names, source.parameters())
        }
    torch.save(result, out)


def micro_batch(batch: Batch, lo: int, hi: int) -> Batch:
    padding = None if batch.padding_mask is None else batch.padding_mask[lo:hi]
    return replace(batch, inputs=batch.inputs[lo:hi], targets=batch.targets[lo:hi], padding_mask=padding)


def difference(a: torch.Tensor, b: torch.Tensor) -> tuple[bool, float]:
    scale = a.abs().max().clamp_min(1e-30)
    return torch.equal(a, b), float((a - b).abs().max() / scale)


def compare(first: Path, second: Path) -> None:
    a, b = torch.load(first), torch.load(second)
    print(f"threads: {a['threads']} against {b['threads']}")
    for part in a:
        if part == "threads":
            continue
        if isinstance(a[part], dict):
            per_name = {name: difference(a[part][name], b[part][name]) for name in a[part]}
            same = all(s for s, _ in per_name.values())
            print(f"{part:42s} identical={same} max relative difference {max(d for _, d in per_name.values()):.3g}")
            for name, (s, d) in per_name.items():
                if not s:
                    print(f"    {name:44s} {d:.3g}")
        else:
            same, d = difference(a[part], b[part])
            print(f"{part:42s} identical={same} max relative difference {d:.3g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("record")
    rec.add_argument("out", type=Path)
    rec.add_argument("spec", type=Path)
    rec.add_argument("--data-root", default=None, help="where the real datasets are (as uhn train --data-root)")
    cmp = commands.add_parser("compare")
    cmp.add_argument("first", type=Path)
    cmp.add_argument("second", type=Path)
    args = parser.parse_args()
    if args.command == "record":
        record(args.out, args.spec, args.data_root)
    else:
        compare(args.first, args.second)


if __name__ == "__main__":
    main()
