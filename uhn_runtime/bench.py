"""``uhn bench``: how fast and how lean generation and training are, against the naive
one-batch generator and the machine's own matmul throughput, measured in one run.

Each case runs in a fresh worker process (``python -m uhn_runtime.bench``), so that its peak
memory is its own: the parent compiles the plan once, saves it to a temporary file, and reads
one JSON line back from every worker. Cases:

* ``matmul``: the device's matmul throughput: a 4096^3 product (``--matmul-size``; 1024^3
  where bf16 is emulated, on a CPU without AMX or AVX512-BF16, whose bf16 matmuls run at a
  small fraction of fp32's), and a product shaped like the generator's (feature table x
  modulated weight), in the run's precision.
* ``generate``: one generation of the target's weights, without gradients.
* ``train_step``: generation + target forward/backward on a batch + AdamW step.
* the same two with the naive generator (``uhn_runtime.naive``), when its estimated memory
  fits; otherwise the report says why and gives ``"naive": null``.

* ``family_step`` (a plan with several targets): train steps as a family run takes them,
  each on the architectures drawn for that step (``train.architecture_draw``, the run's
  ``TargetCache`` and layout cache), so switching architecture and building targets,
  layouts and feature tables on cache misses are in the time. The other cases then measure
  the seen member closest to the seen members' mean size (unless ``--target``): the report's
  ``family.vs_single`` is the family step time over that single-model step time, also per
  generated weight (the drawn members differ in size).

* ``multitask_step`` (a multi-task plan): in one worker, each member's own train step (a
  streak of that member alone, as its single-task run takes them) and then the steps a
  multi-task run takes, each on the member drawn with the plan's probabilities; every member
  trains on a synthetic batch of its own task. The report's ``multitask.vs_probabilities`` is
  the multi-task step over the members' own steps weighted by the probabilities (the issue's
  target: within 10%), ``vs_draws`` the same weighted by the members actually drawn.

``generate`` also reports ``layout_seconds``: building the work units from the plan's compact
descriptors and their feature tables, what the first generation after loading a plan adds.

Times are the median of ``repeats`` runs after one warm-up run. Peak memory is the process's
resident set (VmHWM, reset after setup) on the CPU, ``max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from uhn_spec.errors import UHNError
from uhn_spec.plan import Plan, TargetPlan, load_plan
from uhn_spec.spec import GeneratorSpec, SyntheticShape, TaskSpec

from .data import Batch, loss_fn
from .data.synthetic import load_synthetic
from .fast_features import build_layout
from .generator import UHNGenerator
from .naive import naive_bytes_estimate, naive_generate
from .optim import Precision, cpu_bf16_features, make_adamw
from .run_dir import cpu_model
from .target import DeviceTarget, TargetCache
from .target_segments import forward_in_segments
from .weights import RecursiveSource

GIB = 2**30
FP32 = 4
SQUARE = 4096  # side of the square product that measures the matmul peak
# Where bf16 is emulated (a CPU without AMX or AVX512-BF16: ~0.2 GFLOP/s against fp32's ~10 on
# an AVX2 core), 4096^3 takes over 10 minutes a product; 1024^3 about 10 s.
EMULATED_BF16_SQUARE = 1024
PROBE_SQUARE = 256  # the quick bf16 product that estimates how long the emulated bench takes
SHAPED_ROWS = 1024  # rows and columns of the generator-shaped product (x 2m features)
# The naive generator runs only if its estimated peak stays below this and below the
# memory the machine has available (minus a margin for everything else running).
DEFAULT_NAIVE_MAX_BYTES = 16 * GIB
AVAILABLE_MARGIN_BYTES = 2 * GIB
SYNTHETIC_TRAIN_FRACTION = 0.7  # load_synthetic keeps 70% of the examples for training
TEXT_LENGTH = 128  # tokens per synthetic text example when the spec sets no max_length
USEFUL_FLOPS_DEFINITION = (
    "2 * (2m*d + blocks*2*d*d + d) per generated weight: the multiply-adds of the input "
    "Linear(2m, d), the residual blocks' Linear(d, d) layers and the output Linear(d, 1). "
    "Not counted: the Fourier projection (10*m per row in the naive generator, none in ours), "
    "cos/sin, LayerNorm, biases, activations, and the structure encoder (once per model)."
)


@dataclass(frozen=True)
class BenchOptions:
    repeats: int = 5
    batch: int = 256
    device: str = "cpu"
    precision: str = "fp32"  # fp32, bf16 (autocast for the matmuls) or auto (as training resolves it)
    target: str | None = None
    naive: bool = True
    naive_max_bytes: int = DEFAULT_NAIVE_MAX_BYTES
    target_segments: int = 0  # activation checkpointing of the target in the train step
    seed: int = 0
    square: int | None = None  # side of the peak's square product; None: peak_square's choice


def useful_flops_per_weight(spec: GeneratorSpec) -> int:
    m, d = spec.index_freqs, spec.hidden
    return 2 * (2 * m * d + spec.blocks * 2 * d * d + d)


def matmul_fraction(spec: GeneratorSpec, num_weights: int, seconds: float, matmul_flops_per_s: float) -> float:
    """Useful generator FLOP/s of a generation over the machine's measured matmul FLOP/s."""
    return useful_flops_per_weight(spec) * num_weights / seconds / matmul_flops_per_s


# --------------------------------------------------------------------------- parent


def run_bench(
    plan: Plan,
    options: BenchOptions,
    progress: Callable[[str], None] = lambda _: None,
    notice: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Measure every case, each in its own worker process; return the report. ``notice``
    gets a line before anything is measured where bf16 is emulated (how long it will take)."""
    if options.repeats < 1:
        raise UHNError(f"--repeats: {options.repeats}; give at least 1 (the report uses the median)")
    if options.batch < 1:
        raise UHNError(f"--batch: {options.batch}; give a positive batch size")
    multitask = any(t.probability is not None for t in plan.targets)
    family = len(plan.targets) > 1 and not plan.recursion_depth and not multitask
    if family and options.target is None:
        options = replace(options, target=same_size_member(plan).name)
    options = replace(options, square=peak_square(options))
    target = plan.target(options.target) if options.target else plan.trained_target
    n = target.num_params
    if bf16_emulated(options):
        notice(emulated_bf16_notice(plan.generator, n, options, probe_bf16_flops_per_s()))
    with tempfile.TemporaryDirectory(prefix="uhn-bench-") as tmp:
        plan_path = Path(tmp) / "plan.pt"
        plan.save(plan_path)

        def run(case: str) -> dict[str, Any]:
            return run_case(plan_path, case, options)

        progress("matmul throughput")
        matmul = run("matmul")
        progress("generate (ours)")
        generate = run("generate")
        progress("train step (ours)")
        train = run("train_step")
        recursion = None
        if plan.recursion_depth:
            progress("train step (leaf generated by H0 directly, K = 0)")
            recursion = recursion_report(plan, train, run("train_step_k0"))
        naive, skipped = None, None
        estimate = naive_estimate(plan.generator, n, with_grad=True)
        if not options.naive:
            skipped = "not measured (--no-naive)"
        elif plan.recursion_depth:
            skipped = "not run for a recursive plan (its cost is compared with K = 0 under recursion)"
        elif not naive_fits(estimate, options.naive_max_bytes, options.device):
            skipped = (
                f"not run: the naive one-batch generator needs about {estimate / GIB:.1f} GiB "
                f"for {n:,} weights (its Fourier step alone holds 5 x N x m fp32), over the "
                f"{options.naive_max_bytes / GIB:.0f} GiB limit or the memory available here"
            )
        else:
            progress("generate (naive)")
            naive_generate = run("naive_generate")
            progress("train step (naive)")
            naive_train = run("naive_train_step")
            naive = {
                "generate": naive_generate,
                "train_step": naive_train,
                "estimated_peak_bytes": estimate,
                "max_abs_diff": naive_generate.pop("max_abs_diff"),
                "reference_scale": naive_generate.pop("reference_scale"),
            }
        family_step = None
        if family:
            progress("family train steps (architecture drawn per step)")
            family_step = run("family_step")
        multitask_step = None
        if multitask:
            progress("multi-task train steps (task drawn per step) against each member's own")
            multitask_step = run("multitask_step")
    report = assemble_report(plan, target, options, matmul, generate, train, naive, skipped)
    if multitask_step is not None:
        report["multitask"] = multitask_step
    if recursion is not None:
        report["recursion"] = recursion
    if family_step is not None:
        report["family"] = family_report(family_step, train, n)
    return report


def bf16_emulated(options: BenchOptions) -> bool:
    """Whether the bench's matmuls run in bf16 on a CPU without bf16 matmul instructions
    (``cpu_bf16_features``, what ``auto`` also goes by), where torch emulates them."""
    return options.device == "cpu" and options.precision == "bf16" and not cpu_bf16_features()


def peak_square(options: BenchOptions) -> int:
    """Side of the square product that measures the matmul peak: the one asked for, else
    SQUARE, or EMULATED_BF16_SQUARE where bf16 is emulated."""
    if options.square is not None:
        return options.square
    return EMULATED_BF16_SQUARE if bf16_emulated(options) else SQUARE


def probe_bf16_flops_per_s() -> float:
    """bf16 matmul FLOP/s of one PROBE_SQUARE^3 product on the CPU (after one warm-up)."""
    a = torch.randn(PROBE_SQUARE, PROBE_SQUARE).to(torch.bfloat16)
    torch.mm(a, a)
    start = time.perf_counter()
    torch.mm(a, a)
    return 2 * PROBE_SQUARE**3 / max(time.perf_counter() - start, 1e-9)


def peak_flops(spec: GeneratorSpec, square: int, repeats: int) -> int:
    """FLOPs of the matmul case's products in the run's precision (each timed ``repeats``
    times after one warm-up): the square one and the generator-shaped one."""
    return (repeats + 1) * 2 * (square**3 + SHAPED_ROWS * 2 * spec.index_freqs * SHAPED_ROWS)


def emulated_bf16_notice(spec: GeneratorSpec, num_weights: int, options: BenchOptions, flops_per_s: float) -> str:
    """The line that says, before anything is measured, that bf16 is emulated here and how
    long the peak measurement and each generation will take at ``flops_per_s``."""
    square = peak_square(options)
    peak = peak_flops(spec, square, options.repeats) / flops_per_s
    generation = useful_flops_per_weight(spec) * num_weights / flops_per_s
    return (
        f"bf16 is emulated on this CPU (no AMX or AVX512-BF16 instructions; bf16 matmuls run at about "
        f"{flops_per_s / 1e9:.2g} GFLOP/s here): the matmul peak is measured on a {square}^3 product "
        f"(about {duration(peak)}); each generation of {num_weights:,} weights takes at least {duration(generation)}, "
        f"and the bench runs {2 * (options.repeats + 1)} ({options.repeats + 1} in train steps, with their backward); "
        "--precision fp32 or auto measures what this CPU runs fast"
    )


def duration(seconds: float) -> str:
    """Seconds as a person reads them: "under 0.01 s", "12 s", "4.5 min", "2.1 h"."""
    if seconds < 0.01:
        return "under 0.01 s"
    if seconds < 90:
        return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def recursion_report(plan: Plan, train: dict[str, Any], train_k0: dict[str, Any]) -> dict[str, Any]:
    """A recursive plan's train step against the leaf generated by H0 directly, measured in
    the same run; the bound is what generating that many more weights costs, plus 30%:
    (1 + size(H_1..H_K) / size(leaf)) x 1.3."""
    leaf = plan.trained_target.num_params
    generated = sum(t.num_params for t in plan.targets[:-1])
    ratio = train["seconds"] / train_k0["seconds"]
    bound = (1 + generated / leaf) * 1.3
    return {
        "depth": plan.recursion_depth,
        "k0_train_step_seconds": train_k0["seconds"],
        "train_step_vs_k0": ratio,
        "bound": bound,
        "within_bound": ratio <= bound,
    }


def same_size_member(plan: Plan) -> TargetPlan:
    """The seen member whose size is closest to the seen members' mean (first on ties)."""
    seen = [t for t in plan.targets if t.split == "seen"]
    mean = sum(t.num_params for t in seen) / len(seen)
    return min(seen, key=lambda t: abs(t.num_params - mean))


def family_report(family: dict[str, Any], single: dict[str, Any], single_params: int) -> dict[str, Any]:
    """The family step against the single-model step: raw and per generated weight."""
    single_mean = statistics.fmean(single["times"])
    per_weight_family = family["mean_seconds"] / family["mean_weights"]
    per_weight_single = single_mean / single_params
    cached = family["cached_seconds_per_weight"]
    return {
        **family,
        "single_mean_seconds": single_mean,
        "vs_single": family["mean_seconds"] / single_mean,
        "vs_single_per_weight": per_weight_family / per_weight_single,
        "vs_single_per_weight_cached": None if cached is None else cached / per_weight_single,
    }


def naive_estimate(spec: GeneratorSpec, num_rows: int, with_grad: bool) -> int:
    return int(naive_bytes_estimate(num_rows, spec.index_freqs, spec.hidden, spec.blocks, with_grad))


def naive_fits(estimate: int, limit: int, device: str) -> bool:
    if estimate > limit:
        return False
    if device == "cpu":
        available = available_memory_bytes()
        return available is None or estimate < available - AVAILABLE_MARGIN_BYTES
    free, _ = torch.cuda.mem_get_info()
    return estimate < free - AVAILABLE_MARGIN_BYTES


def available_memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def run_case(plan_path: Path, case: str, options: BenchOptions) -> dict[str, Any]:
    """Run one case (matmul, generate, train_step, naive_generate, naive_train_step) on a
    saved plan in a fresh worker process; return its measurements. A worker that fails
    (out of memory, a signal, an error) is one line: what it raised, never its frames."""
    command = [sys.executable, "-m", "uhn_runtime.bench", case, str(plan_path), json.dumps(asdict(options))]
    proc = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise UHNError(f"bench case {case!r} {worker_failure(proc.returncode, proc.stderr)}")
    return json.loads(lines[-1])


# The line of a Python traceback that names the exception: "ValueError: ...", "torch.OutOfMemoryError: ...".
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b:?")
WORKER_MESSAGE_CHARS = 300


def worker_failure(returncode: int, stderr: str) -> str:
    """What a failed worker died of, in one line: the exception it raised (its message folded
    onto the line and cut to WORKER_MESSAGE_CHARS), or the signal that ended it."""
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else f"signal {-returncode}"
        hint = " (out of memory? the kernel kills with SIGKILL; try a smaller --batch)" if name == "SIGKILL" else ""
        return f"was killed by {name}{hint}"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if EXCEPTION_LINE.match(line)]
    raised = " ".join(lines[starts[-1] :]) if starts else (lines[-1] if lines else "no output")
    if len(raised) > WORKER_MESSAGE_CHARS:
        raised = raised[: WORKER_MESSAGE_CHARS - 3] + "..."
    what = "failed" if returncode else "printed no result"
    return f"{what} (exit {returncode}): {raised}"


def assemble_report(
    plan: Plan,
    target: TargetPlan,
    options: BenchOptions,
    matmul: dict[str, Any],
    generate: dict[str, Any],
    train: dict[str, Any],
    naive: dict[str, Any] | None,
    skipped: str | None,
) -> dict[str, Any]:
    n = target.num_params
    spec = plan.generator
    generate = {
        **generate,
        "weights_per_s": n / generate["seconds"],
        "vs_naive": _ratio(naive, "generate", generate["seconds"]),
        "matmul_fraction": matmul_fraction(spec, n, generate["seconds"], matmul["square_flops_per_s"]),
        # Beside it, against the fp32 peak of the same run: how far a low precision moved us.
        "matmul_fraction_of_fp32_peak": matmul_fraction(spec, n, generate["seconds"], matmul["fp32_square_flops_per_s"]),
    }
    train = {**train, "vs_naive": _ratio(naive, "train_step", train["seconds"])}
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
        "peak_memory_bytes": max(generate["peak_memory_bytes"], train["peak_memory_bytes"]),
        "bytes_per_weight": {"generate": generate["bytes_per_weight"], "train_step": train["bytes_per_weight"]},
        "naive": naive,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "options": asdict(options),
    }
    if skipped is not None:
        report["naive_skipped"] = skipped
    return report


def _ratio(naive: dict[str, Any] | None, case: str, seconds: float) -> float | None:
    return None if naive is None else naive[case]["seconds"] / seconds


def render_report(report: dict[str, Any]) -> str:
    """The report as a short table."""
    gen, train, naive = report["generate"], report["train_step"], report["naive"]

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
        + ("" if mm["dtype"] == "float32" else f"; fp32 {mm['fp32_square_flops_per_s'] / 1e9:.0f} GFLOP/s ({mm['square']}^3)"),
        f"precision: {report['precision']} ({report['precision_reason']})",
        "",
        f"{'':12} {'seconds':>9} {'weights/s':>12} {'vs naive':>9} {'matmul frac':>12} {'peak':>10} {'B/weight':>9}",
        f"{'generate':12} {gen['seconds']:9.3f} {gen['weights_per_s']:12,.0f} {ratio(gen['vs_naive']):>9} "
        f"{gen['matmul_fraction']:12.2f} {gib(gen['peak_memory_bytes']):>10} {gen['bytes_per_weight']:9.0f}",
        f"{'train step':12} {train['seconds']:9.3f} {'':>12} {ratio(train['vs_naive']):>9} {'':>12} "
        f"{gib(train['peak_memory_bytes']):>10} {train['bytes_per_weight']:9.0f}",
    ]
    if naive is not None:
        ng, nt = naive["generate"], naive["train_step"]
        lines += [
            f"{'naive gen':12} {ng['seconds']:9.3f} {report['num_params'] / ng['seconds']:12,.0f} {'':>9} {'':>12} "
            f"{gib(ng['peak_memory_bytes']):>10} {ng['bytes_per_weight']:9.0f}",
            f"{'naive train':12} {nt['seconds']:9.3f} {'':>12} {'':>9} {'':>12} "
            f"{gib(nt['peak_memory_bytes']):>10} {nt['bytes_per_weight']:9.0f}",
            "",
            f"ours vs naive weights: max |diff| {naive['max_abs_diff']:.2e} (weights up to {naive['reference_scale']:.2f})",
        ]
    else:
        lines += ["", f"naive: {report.get('naive_skipped', 'not measured')}"]
    if mm["dtype"] != "float32":
        lines.append(
            f"generate: {gen['matmul_fraction']:.2f} of the {mm['dtype']} matmul peak, "
            f"{gen['matmul_fraction_of_fp32_peak']:.2f} of the fp32 peak (same run)"
        )
    lines.append(f"train step: batch {train['batch']}, generator keeps {train['saving_policy']!r} for the backward")
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
                f"; {family['vs_single_per_weight_cached']:.2f}x on the {family['cached_steps']} steps that built no target)"
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
            f"({multitask['weighted_own_seconds']:.3f} s; own: {own}), {multitask['vs_draws']:.2f}x weighted by the draws"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- worker


@dataclass
class Setup:
    plan: Plan
    target: DeviceTarget
    generator: UHNGenerator
    precision: Precision
    device: torch.device
    flat: Callable[[], torch.Tensor]  # the target's weights: generated, through the chain if recursive


def worker_main(case: str, plan_path: str, options_json: str) -> dict[str, Any]:
    options = BenchOptions(**json.loads(options_json))
    device = torch.device(options.device)
    plan = load_plan(plan_path)
    precision = Precision.resolve(options.precision, device, plan.task_types)  # type: ignore[arg-type]
    if case == "matmul":
        return measure_matmul(device, precision, plan.generator, options.repeats, peak_square(options))
    if case == "family_step":
        return measure_family_step(plan, options, device, precision)
    if case == "multitask_step":
        return measure_multitask_step(plan, options, device, precision)
    target = DeviceTarget(plan.target(options.target) if options.target else plan.trained_target, device)
    torch.manual_seed(options.seed)
    if plan.recursion_depth and case in ("generate", "train_step"):  # the whole chain
        source = RecursiveSource(plan, target, options.seed)
        generator, flat = source.generator, source.flat
    else:  # train_step_k0: the leaf generated by H0 directly
        generator = UHNGenerator(plan.generator, plan.index_ranges, plan.structure_ranges, seed=options.seed).to(device)
        flat = functools.partial(target.generate, generator)
    case = case.removesuffix("_k0")
    setup = Setup(plan, target, generator, precision, device, flat)
    naive_rows = target.index_rows() if case.startswith("naive_") else None
    if case.endswith("train_step"):
        result = measure_train_step(setup, options, naive_rows)
    elif naive_rows is None:
        result = measure_generate(setup, options, naive_rows)
        layout_seconds = measure_layout(setup)
        result["layout_seconds"] = layout_seconds
        result["layout_fraction"] = layout_seconds / result["seconds"]
    else:
        result = measure_generate(setup, options, naive_rows)
    if naive_rows is not None and case == "naive_generate":  # the numerical check: same weights
        with torch.no_grad(), precision.autocast():
            ours = target.generate(generator).float()
            theirs = naive_generate(generator, naive_rows, target.structure_rows).float()
        result["max_abs_diff"] = float((ours - theirs).abs().max()) if ours.numel() else 0.0
        result["reference_scale"] = float(theirs.abs().max()) if ours.numel() else 0.0
    return result


def measure_layout(setup: Setup) -> float:
    """Seconds to build the work units of the target's descriptors and their feature tables:
    what the first generation after loading a plan adds (the generator then caches both).
    Built afresh after the timed generations, so one-time library start-up is not counted."""
    g = setup.generator
    start = time.perf_counter()
    with torch.no_grad():
        layout = build_layout(setup.target.index, g.spec.chunk_rows, g.spec.hidden, g.spec.index_freqs, setup.device)
        layout.tables(g.index_fourier.basis())
    _sync(setup.device)
    return time.perf_counter() - start


def measure_generate(setup: Setup, options: BenchOptions, naive_rows: torch.Tensor | None) -> dict[str, Any]:
    """One generation; with ``naive_rows``, the naive generator's on those rows."""
    t, g = setup.target, setup.generator

    def step() -> None:
        with torch.no_grad(), setup.precision.autocast():
            if naive_rows is None:
                setup.flat()
            else:
                naive_generate(g, naive_rows, t.structure_rows)

    return _measure(step, setup, options.repeats)


def measure_train_step(setup: Setup, options: BenchOptions, naive_rows: torch.Tensor | None) -> dict[str, Any]:
    t, g = setup.target, setup.generator
    batch = synthetic_batch(t.plan.spec.task, options.batch, setup.device)
    metric = t.plan.spec.task.info.metric
    optimizer = make_adamw(g.parameters(), lr=1e-4)
    t.model.train()

    def step() -> None:
        with setup.precision.autocast():
            if naive_rows is None:
                flat = setup.flat()
            else:
                flat = naive_generate(g, naive_rows, t.structure_rows)
            outputs = forward_in_segments(t, flat, options.target_segments, **batch.model_kwargs())
            loss = loss_fn(metric, *batch.select(outputs))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    result = _measure(step, setup, options.repeats)
    result["batch"] = options.batch
    result["target_segments"] = options.target_segments
    result["saving_policy"] = "naive: everything" if naive_rows is not None else g.saving_policy(t.num_params)
    return result


# Timed family steps per --repeats: enough draws to switch architecture many times.
FAMILY_STEPS_PER_REPEAT = 4


def measure_family_step(plan: Plan, options: BenchOptions, device: torch.device, precision: Precision) -> dict[str, Any]:
    """Train steps of a family run: each on the architectures ``architecture_draw`` gives
    for that step, built through a ``TargetCache`` as ``uhn train`` does; one untimed
    warm-up step (library start-up), then ``FAMILY_STEPS_PER_REPEAT * repeats`` timed ones."""
    from .train import architecture_draw  # local: train imports most of the runtime

    seen = [i for i, t in enumerate(plan.targets) if t.split == "seen"]
    train_spec = plan.targets[seen[0]].spec.train
    cache = TargetCache(plan, device)
    torch.manual_seed(options.seed)
    generator = UHNGenerator(plan.generator, plan.index_ranges, plan.structure_ranges, seed=options.seed).to(device)
    generator.layout_cache_size = max(generator.layout_cache_size, cache.capacity)
    batch = synthetic_batch(plan.targets[seen[0]].spec.task, options.batch, device)
    metric = plan.targets[seen[0]].spec.task.info.metric
    optimizer = make_adamw(generator.parameters(), lr=1e-4)

    def step(index: int) -> int:
        drawn = [cache[seen[j]] for j in architecture_draw(train_spec.seed, index, len(seen), train_spec.models_per_step)]
        with precision.autocast():
            losses = []
            for target in drawn:
                flat = target.generate(generator)
                outputs = forward_in_segments(target, flat, options.target_segments, **batch.model_kwargs())
                losses.append(loss_fn(metric, *batch.select(outputs)))
            loss = torch.stack(losses).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        return sum(t.num_params for t in drawn)

    step(0)
    times, weights, built = [], [], []
    for index in range(1, FAMILY_STEPS_PER_REPEAT * options.repeats + 1):
        misses = cache.misses
        start = time.perf_counter()
        weights.append(step(index))
        times.append(time.perf_counter() - start)
        built.append(cache.misses > misses)
    cached = [(t, w) for t, w, b in zip(times, weights, built) if not b]
    return {
        "steps": len(times),
        "seen_models": len(seen),
        "models_per_step": train_spec.models_per_step,
        "cache_capacity": cache.capacity,
        "cache_misses": cache.misses,
        "mean_seconds": statistics.fmean(times),
        "median_seconds": statistics.median(times),
        "mean_weights": statistics.fmean(weights),
        # Steps whose architectures were all cached: switching alone, no target built.
        "cached_steps": len(cached),
        "cached_seconds_per_weight": sum(t for t, _ in cached) / sum(w for _, w in cached) if cached else None,
        "times": times,
    }


# Timed steps per member and --repeats: each member's own streak, then the drawn steps.
MULTITASK_STEPS_PER_REPEAT = 4


def measure_multitask_step(plan: Plan, options: BenchOptions, device: torch.device, precision: Precision) -> dict[str, Any]:
    """Multi-task train steps against each member's own, in one process and one generator.

    First every member alone, a streak of steps (one untimed warm-up, then
    ``MULTITASK_STEPS_PER_REPEAT * repeats`` timed): what its single-task run's step costs.
    Then as many steps per member drawn as ``uhn train`` draws them (``architecture_draw``
    with the probabilities), so switching member each step is in the time. Both share the
    targets (``TargetCache``) and the generator's layout cache, as the runs do."""
    from .train import architecture_draw  # local: train imports most of the runtime

    members = list(range(len(plan.targets)))
    probabilities = [float(plan.targets[i].probability or 0.0) for i in members]
    cache = TargetCache(plan, device)
    torch.manual_seed(options.seed)
    generator = UHNGenerator(plan.generator, plan.index_ranges, plan.structure_ranges, seed=options.seed).to(device)
    generator.layout_cache_size = max(generator.layout_cache_size, cache.capacity)
    batches = [synthetic_batch(plan.targets[i].spec.task, options.batch, device) for i in members]
    optimizer = make_adamw(generator.parameters(), lr=1e-4)

    def step(member: int) -> float:
        start = time.perf_counter()
        target, batch = cache[member], batches[member]
        with precision.autocast():
            flat = target.generate(generator)
            outputs = forward_in_segments(target, flat, options.target_segments, **batch.model_kwargs())
            loss = loss_fn(target.plan.spec.task.info.metric, *batch.select(outputs))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        return time.perf_counter() - start

    timed = MULTITASK_STEPS_PER_REPEAT * options.repeats
    own: list[float] = []
    for member in members:
        step(member)  # warm-up: builds the member's target, layout and feature tables
        own.append(statistics.fmean(step(member) for _ in range(timed)))
    seed = plan.targets[0].spec.train.seed
    drawn, times = [], []
    for index in range(1, timed * len(members) + 1):
        (member,) = architecture_draw(seed, index, len(members), 1, "train", probabilities)
        drawn.append(member)
        times.append(step(member))
    mean = statistics.fmean(times)
    by_probability = sum(p * t for p, t in zip(probabilities, own))
    by_draws = statistics.fmean(own[m] for m in drawn)
    names = [plan.targets[i].name for i in members]
    return {
        "steps": len(times),
        "own_steps_per_member": timed,
        "probabilities": dict(zip(names, probabilities)),
        "own_mean_seconds": dict(zip(names, own)),
        "drawn": {name: drawn.count(i) for i, name in enumerate(names)},
        "mean_seconds": mean,
        "weighted_own_seconds": by_probability,
        "vs_probabilities": mean / by_probability,
        "vs_draws": mean / by_draws,
        "times": times,
    }


def synthetic_batch(task: TaskSpec, batch: int, device: torch.device) -> Batch:
    """One training batch of the task's input shape: synthetic data stands in for the real
    dataset (a graph task gets a graph of ``batch`` nodes, trained full-batch)."""
    info = task.info
    kind = info.task_type.name.lower()
    if info.input_kind == "tokens":
        dims = [task.max_length or TEXT_LENGTH]
    else:
        dims = list(info.input_dims)
    examples = batch if info.input_kind == "nodes" else math.ceil(batch / SYNTHETIC_TRAIN_FRACTION) + 2
    shape = SyntheticShape(task_type=kind, input_dims=dims, num_outputs=info.num_outputs, num_examples=max(8, examples))
    stand_in = TaskSpec(dataset="synthetic", synthetic=shape, vocab_size=task.vocab_size, max_length=task.max_length)
    return next(iter(load_synthetic(stand_in).train_batches(batch, seed=0))).to(device)


def _measure(step: Callable[[], None], setup: Setup, repeats: int) -> dict[str, Any]:
    device = setup.device
    baseline = current_memory(device)
    reset_peak_memory(device)
    start = time.perf_counter()
    step()
    _sync(device)
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    peak = peak_memory(device)
    n = setup.target.num_params
    return {
        "seconds": statistics.median(times),
        "times": times,
        "first_call_seconds": first,
        "peak_memory_bytes": peak,
        "baseline_bytes": baseline,
        "bytes_per_weight": (peak - baseline) / max(n, 1),
        "process_peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def measure_matmul(
    device: torch.device, precision: Precision, spec: GeneratorSpec, repeats: int, square: int = SQUARE
) -> dict[str, Any]:
    """FLOP/s of a ``square``^3 product and of a generator-shaped one: a feature table of
    SHAPED_ROWS rows x 2m against SHAPED_ROWS modulated weight columns (what
    ``fast_features`` runs), in the run's precision; and the fp32 ``square``^3 product beside
    a lower precision's."""
    dtype = precision.dtype or torch.float32
    gen = torch.Generator(device="cpu").manual_seed(0)

    def rate(m: int, k: int, n: int, dtype: torch.dtype = dtype) -> float:
        a = torch.randn(m, k, generator=gen).to(device, dtype)
        b = torch.randn(k, n, generator=gen).to(device, dtype)
        times = []
        for i in range(repeats + 1):
            start = time.perf_counter()
            torch.mm(a, b)
            _sync(device)
            if i:
                times.append(time.perf_counter() - start)
        return 2 * m * k * n / statistics.median(times)

    peak = rate(square, square, square)
    return {
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "dtype": str(dtype).removeprefix("torch."),
        "precision": precision.name,
        "precision_reason": precision.reason,
        "square": square,
        "square_flops_per_s": peak,
        "generator_shaped_flops_per_s": rate(SHAPED_ROWS, 2 * spec.index_freqs, SHAPED_ROWS),
        "fp32_square_flops_per_s": peak if dtype == torch.float32 else rate(square, square, square, torch.float32),
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {cpu_model()} ({os.cpu_count()} cores)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def current_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return _proc_status_bytes("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_memory(device: torch.device) -> None:
    """Forget the setup's peak: CUDA's peak statistics, or the kernel's VmHWM (Linux)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # no reset: the peak then includes the setup's (conservative)


def peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return _proc_status_bytes("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


if __name__ == "__main__":
    print(json.dumps(worker_main(*sys.argv[1:4])))
