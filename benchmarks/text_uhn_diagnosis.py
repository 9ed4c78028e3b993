"""Why the text UHNs stay near chance at the cpu budget: step-0 weights, attention and gradients.

    OMP_NUM_THREADS=1 python benchmarks/text_uhn_diagnosis.py --data-root /work/shared/data \
        [--spec specs/agnews_transformer2l.yaml] [--variant NAME=KEY=VALUE,KEY=VALUE ...] \
        [--init-steps 0] [--json benchmarks/results/text_uhn_diagnosis.json]

For each variant (the table's cpu-budget overrides plus the variant's own ``--set``s) it builds
the plan, the UHN (seeded as a run is) and the direct model's PyTorch-default init, and reports:

* per generated tensor: mean and std against the direct init's (issue 29, "weights at step 0");
* the embedding: mean pairwise cosine similarity of its rows (raw and column-centred) and the
  cosine between the (centred) rows of tokens t and t + lag: a generator whose index features
  cannot tell neighbouring token ids apart gives every token nearly its neighbour's vector;
* the same lag cosines of the index Fourier features alone (the embedding_idx field varied,
  the other fields fixed), which is what the generator's first Linear can tell apart;
* on one training batch: the loss, the logits' std, each attention layer's score std and the
  mean of each query's largest attention weight (saturation), UHN and direct;
* the gradient of that loss: its norm per generated tensor (dL/dw), the direct model's per
  tensor, and the norm of the generator-parameter gradient each tensor group sends back;
* one AdamW step at the run's lr (direct: its direct_lr): per tensor group the relative change
  of the weights and its cosine with -dL/dw.

With ``--init-steps N`` the UHN variants are also measured after N init-phase steps.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from uhn_runtime.data import Batch, load_task_data
from uhn_runtime.model.target import DeviceTarget
from uhn_runtime.model.weights import UHNSource, make_source
from uhn_runtime.train.init_phase import run_init_phase
from uhn_runtime.train.precision import Precision
from uhn_runtime.train.run_dir import cpu_model
from uhn_spec import compile_spec, load_spec
from uhn_spec.files import atomic_write_text
from uhn_spec.layers.base import activate, feature_norm
from uhn_spec.layers.mha import MHALayer
from uhn_tools.reproduce.tables import load_table

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = REPO / "specs" / "agnews_transformer2l.yaml"
LAGS = (1, 2, 5, 10, 20, 50, 200)
GROUPS = ("embedding", "position", "attention", "linear", "classifier")


def cpu_overrides(spec_path: Path) -> list[str]:
    """The cpu-budget ``--set``s of the Table 1 row that trains this spec."""
    rel = f"specs/{spec_path.name}"
    for row in load_table("table1")[0].rows:
        if row.spec == rel:
            return list(row.budgets["cpu"].set)
    return []


def row_cosines(rows: torch.Tensor) -> dict[str, Any]:
    """Mean pairwise cosine of the rows (raw, centred) and of rows ``lag`` apart (centred)."""
    rows = rows.detach().double()

    def mean_pairwise(x: torch.Tensor) -> float:
        unit = F.normalize(x, dim=1)
        total = unit.sum(0)
        n = x.shape[0]
        return float((total @ total - n) / (n * n - n))

    centred = F.normalize(rows - rows.mean(0), dim=1)
    lags = {str(k): float((centred[:-k] * centred[k:]).sum(1).mean()) for k in LAGS if k < rows.shape[0]}
    return {"pairwise": mean_pairwise(rows), "pairwise_centred": mean_pairwise(rows - rows.mean(0)), "lag": lags}


def feature_lag_cosines(source: UHNSource, target: DeviceTarget, tensor: str) -> dict[str, float]:
    """Cosine between the index Fourier features of rows (t, j) and (t + lag, j) of ``tensor``:
    how alike the generator's input sees two tokens ``lag`` ids apart (all else equal)."""
    param = next(p for p in target.plan.params if p.name == tensor)
    rows = target.index_rows()[param.offset : param.offset + param.numel].view(*param.shape, -1)[:, 0]
    with torch.no_grad():
        feats = F.normalize(source.generator.index_fourier(rows.float()).double(), dim=1)
    return {str(k): float((feats[:-k] * feats[k:]).sum(1).mean()) for k in LAGS if k < feats.shape[0]}


def group_of(name: str, spec_layers: list[Any]) -> str:
    layer = spec_layers[int(name.split(".")[1])]
    if layer.kind == "embedding":
        return "embedding" if name.endswith(".weight") else "position"
    if layer.kind == "mha":
        return "attention"
    return "classifier" if name.split(".")[1] == str(len(spec_layers) - 1) else "linear"


def tensor_stats(flat: torch.Tensor, target: DeviceTarget, reference: torch.Tensor) -> dict[str, Any]:
    """Per tensor: generated mean/std, and the direct (PyTorch default) init's."""
    gen, ref = target.params_from_flat(flat.detach()), target.params_from_flat(reference)
    return {
        name: {
            "mean": float(w.mean()),
            "std": float(w.std()),
            "init_mean": float(ref[name].mean()),
            "init_std": float(ref[name].std()),
        }
        for name, w in gen.items()
    }


def attention_probe(target: DeviceTarget, flat: torch.Tensor, batch: Batch) -> dict[str, Any]:
    """Forward one batch (eval mode); per MHA layer the std of the attention scores over real
    keys and the mean largest attention weight of a query (1.0: one-hot, saturated)."""
    found: dict[str, Any] = {}
    hooks = []
    params = target.params_from_flat(flat)
    for path, module in target.model.named_modules():
        if isinstance(module, MHALayer):
            hooks.append(module.register_forward_hook(_attention_hook(path, params, batch.padding_mask, found)))
    target.model.eval()
    with torch.no_grad():
        logits = target.forward(flat, **batch.model_kwargs())
    for hook in hooks:
        hook.remove()
    return {"logits_std": float(logits.std()), "loss": float(F.cross_entropy(logits, batch.targets)), "mha": found}


def _attention_hook(path: str, params: dict[str, torch.Tensor], mask: torch.Tensor | None, out: dict[str, Any]):
    def hook(module: MHALayer, args: tuple[Any, ...], _result: torch.Tensor) -> None:
        x = activate(args[0], module.spec.activation)
        x = feature_norm(x) if module.spec.norm else x
        heads, d = module.spec.heads, module.spec.dim
        p = {k: params[f"{path}.{k}"] for k in ("q_weight", "k_weight", "q_bias", "k_bias")}
        q = F.linear(x, p["q_weight"], p["q_bias"]).unflatten(-1, (heads, d // heads)).transpose(1, 2)
        k = F.linear(x, p["k_weight"], p["k_bias"]).unflatten(-1, (heads, d // heads)).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / (d // heads) ** 0.5
        keep = torch.ones_like(scores, dtype=torch.bool) if mask is None else ~mask[:, None, None, :].expand_as(scores)
        probs = scores.masked_fill(~keep, float("-inf")).softmax(-1)
        out[path] = {
            "score_std": float(scores[keep].std()),
            "max_weight": float(probs.amax(-1).mean()),
            "input_std": float(x.std()),
        }

    return hook


def gradient_probe(source: Any, target: DeviceTarget, batch: Batch) -> dict[str, Any]:
    """dL/dw norm per tensor; for a UHN also the generator-gradient norm per tensor group."""
    torch.manual_seed(0)
    target.model.train()
    flat = source.flat(target)
    weights = flat.detach().requires_grad_()
    loss = F.cross_entropy(target.forward(weights, **batch.model_kwargs()), batch.targets)
    (grad,) = torch.autograd.grad(loss, weights)
    per_tensor = {name: float(g.norm()) for name, g in target.params_from_flat(grad).items()}
    out: dict[str, Any] = {"loss": float(loss), "dL_dw": per_tensor, "dL_dw_total": float(grad.norm())}
    if isinstance(source, UHNSource):
        out["generator_grad_by_group"] = generator_grad_by_group(source, target, flat, grad)
    return out


def generator_grad_by_group(
    source: UHNSource, target: DeviceTarget, flat: torch.Tensor, grad: torch.Tensor
) -> dict[str, float]:
    """Norm of the generator-parameter gradient that each group's dL/dw sends back alone."""
    layers = list(target.plan.spec.layers)
    params = [p for p in source.parameters() if p.requires_grad]
    out: dict[str, float] = {}
    for group in (*GROUPS, "all"):
        masked = torch.zeros_like(grad)
        for p in target.plan.params:
            if group == "all" or group_of(p.name, layers) == group:
                masked[p.offset : p.offset + p.numel] = grad[p.offset : p.offset + p.numel]
        grads = torch.autograd.grad((flat * masked).sum(), params, retain_graph=True, allow_unused=True)
        out[group] = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None)))
    return out


def step_probe(source: Any, target: DeviceTarget, batch: Batch, lr: float) -> dict[str, Any]:
    """One AdamW step (lr ``lr``) on a copy of ``source``: per tensor group the relative change
    of the weights and the cosine between the change and -dL/dw (1: the step moves the group
    straight down its gradient; about 0: the generator cannot move it where the loss wants)."""
    source = copy.deepcopy(source)  # with its own copy of the target: flat() below uses that
    optimizer = torch.optim.AdamW([p for p in source.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    torch.manual_seed(0)
    target.model.train()
    before = source.flat()
    loss = F.cross_entropy(target.forward(before, **batch.model_kwargs()), batch.targets)
    weights = before.detach().clone()  # a direct source's flat() is its parameter itself
    (grad,) = torch.autograd.grad(loss, before, retain_graph=True)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        change = source.flat().detach() - weights
    layers = list(target.plan.spec.layers)
    out: dict[str, Any] = {"lr": lr}
    for group in GROUPS:
        params = [p for p in target.plan.params if group_of(p.name, layers) == group]
        rows = torch.cat([torch.arange(p.offset, p.offset + p.numel) for p in params])
        d, g, w = change[rows].double(), grad[rows].double(), weights[rows].double()
        out[group] = {
            "relative_change": float(d.norm() / w.norm().clamp_min(1e-12)),
            "cos_with_descent": float(-(d @ g) / (d.norm() * g.norm()).clamp_min(1e-30)),
        }
    return out


def measure(source: Any, target: DeviceTarget, reference: torch.Tensor, batch: Batch, lr: float) -> dict[str, Any]:
    with torch.no_grad():
        flat = source.flat(target).detach()
    layers = list(target.plan.spec.layers)
    emb = next(p.name for p in target.plan.params if group_of(p.name, layers) == "embedding")
    out: dict[str, Any] = {
        "tensors": tensor_stats(flat, target, reference),
        "embedding_rows": row_cosines(target.params_from_flat(flat)[emb]),
        "forward": attention_probe(target, flat, batch),
        "gradient": gradient_probe(source, target, batch),
        "one_step": step_probe(source, target, batch, lr),
    }
    if isinstance(source, UHNSource):
        out["index_feature_lag_cosine"] = feature_lag_cosines(source, target, emb)
    return out


def run_variant(
    spec_path: Path, overrides: list[str], data_root: str, init_steps: int, init_lr: float
) -> dict[str, Any]:
    spec = load_spec(spec_path, overrides)
    plan = compile_spec(spec)
    target = DeviceTarget(plan.targets[0])
    data = load_task_data(spec.task, data_root)
    batch = next(iter(data.train_batches(spec.train.batch_size, spec.train.seed)))
    direct = make_source("direct", plan, target, spec.train.seed)
    reference = direct.flat().detach().clone()
    uhn = make_source("uhn", plan, target, spec.train.seed)
    started = time.perf_counter()
    direct_lr = spec.train.direct_lr or spec.train.lr
    result: dict[str, Any] = {"overrides": overrides, "direct": measure(direct, target, reference, batch, direct_lr)}
    result["uhn_step0"] = measure(uhn, target, reference, batch, spec.train.lr)
    if init_steps:
        precision = Precision.resolve("fp32", torch.device("cpu"), ())
        last = run_init_phase(uhn, target.init_targets(), init_steps, init_lr, precision, "init")
        after = measure(uhn, target, reference, batch, spec.train.lr)
        result[f"uhn_after_init_{init_steps}"] = {"init_loss": last, **after}
    result["seconds"] = time.perf_counter() - started
    return result


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, sets = text.partition("=")
    return name, [s for s in sets.split(",") if s]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    parser.add_argument("--data-root", required=True)
    parser.add_argument(
        "--variant", action="append", default=[], help="NAME=KEY=VALUE,KEY=VALUE (added to the cpu budget)"
    )
    parser.add_argument("--direct-lr", type=float, default=0.0111, help="the direct baseline's lr (Table 1's choice)")
    parser.add_argument("--init-steps", type=int, default=0)
    parser.add_argument("--init-lr", type=float, default=1e-3)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "text_uhn_diagnosis.json")
    args = parser.parse_args()
    base = [*cpu_overrides(args.spec), "train.precision=fp32", f"train.direct_lr={args.direct_lr}"]
    variants = [parse_variant(v) for v in args.variant] or [("cpu_budget", [])]
    report: dict[str, Any] = {
        "command": "python benchmarks/text_uhn_diagnosis.py " + " ".join(sys.argv[1:]),
        "machine": cpu_model(),
        "threads": torch.get_num_threads(),
        "load_average_start": os.getloadavg(),
        "spec": str(args.spec.relative_to(REPO) if args.spec.is_absolute() else args.spec),
        "variants": {},
    }
    for name, sets in variants:
        report["variants"][name] = run_variant(args.spec, base + sets, args.data_root, args.init_steps, args.init_lr)
        print(f"{name}: done", flush=True)
    report["load_average_end"] = os.getloadavg()
    atomic_write_text(args.json, json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
