"""The report of a `uhn bench` run: its JSON fields, and the short table printed without --json."""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

import torch

from uhn_spec.plan import Plan, TargetPlan

from .flops import USEFUL_FLOPS_DEFINITION, matmul_fraction, useful_flops_per_weight
from .options import GIB, BenchOptions


def assemble_report(
    plan: Plan,
    target: TargetPlan,
    options: BenchOptions,
    matmul: dict[str, Any],
    generate: dict[str, Any],
    train: dict[str, Any],
    exact: dict[str, Any],
    naive: dict[str, Any] | None,
    skipped: str | None,
) -> dict[str, Any]:
    """The report's fields. ``train`` is the trainer's default step, ``exact`` its exact step
    (micro-shards) or ``{"not_applicable": why}``; the naive train step is the same trainer
    step with the naive generator as the weight source."""
    n = target.num_params
    spec = plan.generator
    generate = {
        **generate,
        "weights_per_s": n / generate["seconds"],
        "vs_naive": _ratio(naive, "generate", generate["seconds"]),
        "matmul_fraction": matmul_fraction(spec, n, generate["seconds"], matmul["square_flops_per_s"]),
        # Beside it, against the fp32 peak of the same run: how far a low precision moved us.
        "matmul_fraction_of_fp32_peak": matmul_fraction(
            spec, n, generate["seconds"], matmul["fp32_square_flops_per_s"]
        ),
    }
    train = {**train, "vs_naive": _ratio(naive, "train_step", train["seconds"])}
    exact_skipped = exact.get("not_applicable")
    if exact_skipped is None:
        exact = {
            **exact,
            "vs_naive": _ratio(naive, "train_step", exact["seconds"]),
            "vs_default": exact["seconds"] / train["seconds"],  # what choosing exactness costs
        }
    report: dict[str, Any] = {
        "device": matmul["device"],
        "threads": matmul["threads"],
        "precision": matmul["precision"],  # what the run used (auto resolved)
        "precision_requested": options.precision,
        "precision_reason": matmul["precision_reason"],
        "torch": torch.__version__,
        "target": target.name,
        "num_params": n,
        "generator": {
            "index_freqs": spec.index_freqs,
            "hidden": spec.hidden,
            "blocks": spec.blocks,
            "structure_encoder": spec.structure_encoder,
        },
        "useful_flops_per_weight": useful_flops_per_weight(spec),
        "useful_flops_definition": USEFUL_FLOPS_DEFINITION,
        "matmul": matmul,
        "generate": generate,
        "train_step": train,
        "exact_train_step": None if exact_skipped else exact,
        "peak_memory_bytes": max(generate["peak_memory_bytes"], train["peak_memory_bytes"]),
        "bytes_per_weight": {"generate": generate["bytes_per_weight"], "train_step": train["bytes_per_weight"]},
        "naive": naive,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "options": asdict(options),
    }
    if skipped is not None:
        report["naive_skipped"] = skipped
    if exact_skipped is not None:
        report["exact_skipped"] = exact_skipped
    return report


def _ratio(naive: dict[str, Any] | None, case: str, seconds: float) -> float | None:
    return None if naive is None else naive[case]["seconds"] / seconds


def render_report(report: dict[str, Any]) -> str:
    """The report as a short table."""
    gen, train, exact, naive = report["generate"], report["train_step"], report["exact_train_step"], report["naive"]

    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}x"

    def gib(value: int) -> str:
        return f"{value / GIB:.2f} GiB"

    mm = report["matmul"]
    lines = [
        f"uhn bench: {report['target']} ({report['num_params']:,} weights) on {report['device']}, "
        f"{report['threads']} threads, {report['precision']}",
        f"matmul: {mm['square_flops_per_s'] / 1e9:.0f} GFLOP/s ({mm['square']}^3), "
        f"{mm['generator_shaped_flops_per_s'] / 1e9:.0f} GFLOP/s (generator-shaped)"
        + (
            ""
            if mm["dtype"] == "float32"
            else f"; fp32 {mm['fp32_square_flops_per_s'] / 1e9:.0f} GFLOP/s ({mm['square']}^3)"
        ),
        f"precision: {report['precision']} ({report['precision_reason']})",
        "",
        f"{'':12} {'seconds':>9} {'weights/s':>12} {'vs naive':>9} {'matmul frac':>12} {'peak':>10} {'B/weight':>9}",
        f"{'generate':12} {gen['seconds']:9.3f} {gen['weights_per_s']:12,.0f} {ratio(gen['vs_naive']):>9} "
        f"{gen['matmul_fraction']:12.2f} {gib(gen['peak_memory_bytes']):>10} {gen['bytes_per_weight']:9.0f}",
        f"{'train step':12} {train['seconds']:9.3f} {'':>12} {ratio(train['vs_naive']):>9} {'':>12} "
        f"{gib(train['peak_memory_bytes']):>10} {train['bytes_per_weight']:9.0f}",
    ]
    if exact is not None:
        lines.append(
            f"{'exact step':12} {exact['seconds']:9.3f} {'':>12} {ratio(exact['vs_naive']):>9} {'':>12} "
            f"{gib(exact['peak_memory_bytes']):>10} {exact['bytes_per_weight']:9.0f}"
        )
    if naive is not None:
        ng, nt = naive["generate"], naive["train_step"]
        lines += [
            f"{'naive gen':12} {ng['seconds']:9.3f} {report['num_params'] / ng['seconds']:12,.0f} {'':>9} {'':>12} "
            f"{gib(ng['peak_memory_bytes']):>10} {ng['bytes_per_weight']:9.0f}",
            f"{'naive train':12} {nt['seconds']:9.3f} {'':>12} {'':>9} {'':>12} "
            f"{gib(nt['peak_memory_bytes']):>10} {nt['bytes_per_weight']:9.0f}",
            "",
            f"ours vs naive weights: max |diff| {naive['max_abs_diff']:.2e} "
            f"(weights up to {naive['reference_scale']:.2f})",
        ]
    else:
        lines += ["", f"naive: {report.get('naive_skipped', 'not measured')}"]
    if mm["dtype"] != "float32":
        lines.append(
            f"generate: {gen['matmul_fraction']:.2f} of the {mm['dtype']} matmul peak, "
            f"{gen['matmul_fraction_of_fp32_peak']:.2f} of the fp32 peak (same run)"
        )
    lines.append(
        f"train step: the trainer's default ({train['step']}) step, Trainer.train_step as uhn train runs it; "
        f"batch {train['batch']}, generator keeps {train['saving_policy']!r} for the backward"
    )
    if exact is not None:
        lines.append(
            f"exact step (uhn train --exact): {exact['micro_shards']} micro-shards, "
            f"{exact['vs_default']:.2f}x the default step"
        )
    else:
        lines.append(f"exact step: not measured ({report.get('exact_skipped')})")
    if naive is not None:
        lines.append("naive train: the same trainer step with the naive generator as its weight source")
    if "recursion" in report:
        r = report["recursion"]
        lines.append(
            f"recursion: depth {r['depth']}, train step {r['train_step_vs_k0']:.2f}x the leaf generated by H0 "
            f"directly ({r['k0_train_step_seconds']:.3f} s); bound {r['bound']:.2f}x "
            f"({'within' if r['within_bound'] else 'OVER'})"
        )
    lines.append(
        f"layout: {gen['layout_seconds']:.3f} s to build the work units after loading the plan, "
        f"{gen['layout_fraction']:.1%} of one generation"
    )
    family = report.get("family")
    if family is not None:
        lines.append(
            f"family step: {family['mean_seconds']:.3f} s mean over {family['steps']} steps on "
            f"{family['seen_models']} seen models ({family['cache_misses']} target builds), "
            f"{family['vs_single']:.2f}x the single-model step of {report['target']} "
            f"({family['vs_single_per_weight']:.2f}x per generated weight"
            + (
                f"; {family['vs_single_per_weight_cached']:.2f}x on the {family['cached_steps']} steps "
                "that built no target)"
                if family["cached_steps"]
                else ")"
            )
        )
    multitask = report.get("multitask")
    if multitask is not None:
        own = ", ".join(f"{name} {seconds:.3f} s" for name, seconds in multitask["own_mean_seconds"].items())
        lines.append(
            f"multi-task step: {multitask['mean_seconds']:.3f} s mean over {multitask['steps']} drawn steps; "
            f"{multitask['vs_probabilities']:.2f}x the members' own steps weighted by the probabilities "
            f"({multitask['weighted_own_seconds']:.3f} s; own: {own}), "
            f"{multitask['vs_draws']:.2f}x weighted by the draws"
        )
    return "\n".join(lines)
