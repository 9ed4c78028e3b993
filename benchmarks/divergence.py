"""Where two runs of the same training part: per-step differences of gradients, generator
parameters and generated weights, and the generator's ReLU units that switch sides.

    # record every optimiser step of a run (under torchrun: rank 0's view, the global gradient)
    A="train specs/digits_mlp.yaml --mode uhn --set train.epochs=2"
    OMP_NUM_THREADS=1 python benchmarks/divergence.py record one.pt -- $A -o one
    OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node 2 benchmarks/divergence.py record two.pt -- $A -o two
    # compare them step by step
    python benchmarks/divergence.py compare specs/digits_mlp.yaml one.pt two.pt [--json]

``record`` runs ``uhn train`` in this process with ``Stepper.step`` wrapped to keep the
gradient (after backward: under torchrun after DDP's average) and the parameters (after the
step) of every optimiser step, init phase included, in memory; the file is written at the end.
It suits small runs (the digits MLP: 32 steps of 148,353 parameters, about 40 MB).
On the exact data-parallel path (the default; docs/distributed.md) the recorded "loss" is the
step's surrogate sum(flat * gradient), not the task loss; add ``--micro-shards 0`` to the
``uhn train`` arguments to study DDP's path, as the figures in docs/distributed.md do.
``compare`` reports, per step: the loss (under torchrun rank 0's share of it), the
norm-relative difference of the gradients, of the generator's parameters and of the generated
weights, and how many of the generator's ReLU inputs (every index row x hidden unit x ReLU
site) have opposite signs in the two runs.
docs/distributed.md ("Why the digits run parts") reads these figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from uhn_runtime.model.generator import LAYER_NORM_EPS, UHNGenerator
from uhn_runtime.train import optim
from uhn_spec import compile_spec, load_spec


def record(out: Path, uhn_args: list[str]) -> None:
    steps: list[dict[str, Any]] = []

    def traced_step(self: optim.Stepper, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()
        params = self.params()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        steps.append({"loss": float(loss.detach()), "grad": grads, "param": [p.detach().clone() for p in params]})

    optim.Stepper.step = traced_step  # type: ignore[method-assign]
    from uhn_cli.main import app

    try:
        app(uhn_args, standalone_mode=False)
    finally:
        if int(os.environ.get("RANK", "0")) == 0:
            torch.save(steps, out)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm().clamp_min(1e-30))


def relu_inputs(generator: UHNGenerator, rows: torch.Tensor) -> list[torch.Tensor]:
    """The input of every ReLU of the generator's index path, over all ``rows`` (the naive
    way: fine for a small target)."""
    with torch.no_grad():
        h = generator.index_in(generator.index_fourier(rows))
        sites = []
        for block in generator.blocks:
            n1w, n1b, l1w, l1b, *_ = block.parameters()
            sites.append(h)
            sites.append(F.linear(F.layer_norm(torch.relu(h), n1w.shape, n1w, n1b, LAYER_NORM_EPS), l1w, l1b))
            h = block(h)
        sites.append(h)
    return sites


def compare(spec_path: Path, first: Path, second: Path) -> list[dict[str, Any]]:
    plan = compile_spec(load_spec(spec_path))
    target = plan.targets[0]
    runs = [torch.load(first), torch.load(second)]
    generators = [
        UHNGenerator(plan.generator, plan.index_ranges, plan.structure_ranges, seed=target.spec.train.seed)
        for _ in runs
    ]
    rows, structure = target.index_rows(), target.structure_rows()
    report = []
    for step in range(min(len(runs[0]), len(runs[1]))):
        a, b = runs[0][step], runs[1][step]
        if len(a["param"]) != len(list(generators[0].parameters())):
            break  # past the UHN phase (a direct phase's one flat parameter)
        weights, sites = [], []
        for generator, state in zip(generators, (a, b)):
            with torch.no_grad():
                for p, value in zip(generator.parameters(), state["param"]):
                    p.copy_(value)
                weights.append(generator(target.index, structure))
            sites.append(relu_inputs(generator, rows))
        flips = sum(int(((x > 0) != (y > 0)).sum()) for x, y in zip(*sites))
        report.append(
            {
                "step": step + 1,
                "loss": [a["loss"], b["loss"]],
                "grad_rel": relative(
                    torch.cat([g.flatten() for g in a["grad"]]), torch.cat([g.flatten() for g in b["grad"]])
                ),
                "param_rel": relative(
                    torch.cat([p.flatten() for p in a["param"]]), torch.cat([p.flatten() for p in b["param"]])
                ),
                "weights_rel": relative(weights[0], weights[1]),
                "relu_sign_flips": flips,
            }
        )
    return report


def main(argv: list[str]) -> None:
    if argv[:1] == ["record"]:
        if len(argv) < 3 or "--" not in argv:
            raise SystemExit("usage: divergence.py record OUT.pt -- train SPEC [uhn train options]")
        split = argv.index("--")
        record(Path(argv[1]), argv[split + 1 :])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["compare"])
    parser.add_argument("spec", type=Path)
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = compare(args.spec, args.first, args.second)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print("step  loss (first, second)      grad rel  param rel  weights rel  ReLU sign flips (after the step)")
    for r in report:
        print(
            f"{r['step']:4d}  {r['loss'][0]:.6g}, {r['loss'][1]:.6g}".ljust(34)
            + f"{r['grad_rel']:.1e}   {r['param_rel']:.1e}    {r['weights_rel']:.1e}      {r['relu_sign_flips']}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
