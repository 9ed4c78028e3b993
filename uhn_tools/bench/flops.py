"""The generator's useful FLOPs per weight and the machine's measured matmul throughput (the
``matmul`` case), with the bf16 special case: where a CPU emulates bf16 matmuls, a smaller
peak product and a notice of how long the bench will take."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from uhn_runtime.train.precision import Precision, cpu_bf16_features
from uhn_spec.spec import GeneratorSpec

from .memory import device_name, sync
from .options import BenchOptions

SQUARE = 4096  # side of the square product that measures the matmul peak
# Where bf16 is emulated (a CPU without AMX or AVX512-BF16: ~0.2 GFLOP/s against fp32's ~10 on
# an AVX2 core), 4096^3 takes over 10 minutes a product; 1024^3 about 10 s.
EMULATED_BF16_SQUARE = 1024
PROBE_SQUARE = 256  # the quick bf16 product that estimates how long the emulated bench takes
SHAPED_ROWS = 1024  # rows and columns of the generator-shaped product (x 2m features)
USEFUL_FLOPS_DEFINITION = (
    "2 * (2m*d + blocks*2*d*d + d) per generated weight: the multiply-adds of the input "
    "Linear(2m, d), the residual blocks' Linear(d, d) layers and the output Linear(d, 1). "
    "Not counted: the Fourier projection (10*m per row in the naive generator, none in ours), "
    "cos/sin, LayerNorm, biases, activations, and the structure encoder (once per model)."
)


def useful_flops_per_weight(spec: GeneratorSpec) -> int:
    m, d = spec.index_freqs, spec.hidden
    return 2 * (2 * m * d + spec.blocks * 2 * d * d + d)


def matmul_fraction(spec: GeneratorSpec, num_weights: int, seconds: float, matmul_flops_per_s: float) -> float:
    """Useful generator FLOP/s of a generation over the machine's measured matmul FLOP/s."""
    return useful_flops_per_weight(spec) * num_weights / seconds / matmul_flops_per_s


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
        f"and the bench runs {3 * (options.repeats + 1)} ({2 * (options.repeats + 1)} in train steps, with their "
        "backward: the default and the exact step); "
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
            sync(device)
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
