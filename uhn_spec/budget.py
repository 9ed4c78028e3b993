"""How much memory compiling and training a spec needs, estimated from the spec alone.

Estimated before anything is allocated, so that ``uhn compile`` and ``uhn train`` refuse a
target that cannot fit this machine (with the numbers and how to override) instead of being
killed halfway, and ``uhn validate`` can report it. The estimate is deliberately simple and
errs high: parameter count N, generator width d and Fourier frequencies m, and the batch's
activations. It is the one place that models memory; refine it here when the runtime changes.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .errors import SpecError, UHNError

if TYPE_CHECKING:
    from .layers.base import FeatureShape
    from .spec import ExperimentSpec

GIB = 2**30
FP32 = 4
# Compiling itself is O(parameter tensors) (plans are compact), but a plan is only of use if
# its weights can be generated here: the flat weights and the layout's output permutation
# (int64) take this much per weight before anything else. `uhn compile` refuses below it.
GENERATION_FLOOR_BYTES = FP32 + 8
# Kept for the backward of each generated weight at most (the generator's max_saved_bytes).
GENERATOR_SAVED_BYTES_CAP = GIB
# Each activation value is held about this often in a train step: the forward's output,
# what the backward keeps of it (norm/activation inputs) and its gradient.
ACTIVATION_COPIES = 3
# A parameter trained directly: the value, its gradient and AdamW's two moments.
DIRECT_BYTES_PER_PARAM = 4 * FP32
MEMORY_LIMIT_ENV = "UHN_MEMORY_LIMIT_GIB"

Purpose = Literal["compile", "train"]


@dataclass(frozen=True)
class Budget:
    """Parameters of the target and the peak memory (bytes) compiling and training need."""

    layer_params: tuple[int, ...]
    compile_bytes: int
    train_bytes: int

    @property
    def num_params(self) -> int:
        return sum(self.layer_params)

    def needed(self, purpose: Purpose) -> int:
        return self.compile_bytes if purpose == "compile" else self.train_bytes


def estimate_budget(spec: ExperimentSpec) -> Budget:
    """The memory compile and a train step need for ``spec`` (no tensor is allocated)."""
    counts = layer_param_counts(spec)
    n = sum(counts)
    g = spec.generator
    floor = compile_bytes(n)
    generator_params = (2 * g.index_freqs + 2 * g.blocks * g.hidden + 2) * g.hidden
    activations = spec.train.batch_size * activation_values(spec) * FP32 * ACTIVATION_COPIES
    generated = (
        floor
        + 3 * n * FP32  # the generated weights, their gradient and one temporary
        + min(n * g.hidden * FP32, GENERATOR_SAVED_BYTES_CAP)
        + min(g.chunk_rows, n) * (2 * g.index_freqs + 4 * g.hidden) * FP32  # one work unit
        + generator_params * DIRECT_BYTES_PER_PARAM
    )
    direct = n * DIRECT_BYTES_PER_PARAM
    return Budget(tuple(counts), compile_bytes=floor, train_bytes=max(generated, direct) + activations)


def compile_bytes(num_params: int) -> int:
    """What a target of ``num_params`` weights needs before anything else: what compile checks
    (and what loading a plan checks its targets against)."""
    return num_params * GENERATION_FLOOR_BYTES


def layer_param_counts(spec: ExperimentSpec) -> list[int]:
    """Parameters per layer, from each layer's skeleton on the meta device (no memory).
    Imported here, not above: ``uhn --help`` and the error paths stay free of torch."""
    from .layers.base import parameter_counts

    return parameter_counts(spec.layers)


def activation_values(spec: ExperimentSpec) -> int:
    """Values one example produces through the target: every layer's output, plus the
    attention matrices (heads x T x T) of attention layers."""
    from .tasks import input_shape

    if spec.family == "uhn":
        return 0  # a generated generator reads descriptors, not a batch: its cost is per generated row
    shape = input_shape(spec.task.info, spec.task.vocab_size)
    total = example_values(shape, spec)
    for i, layer in enumerate(spec.layers):
        shape = layer.output_shape(shape, f"layers[{i}]")
        total += example_values(shape, spec)
        if layer.kind == "mha":
            length = shape.dims[0]
            total += getattr(layer, "heads", 1) * length * length
    return total


def example_values(shape: FeatureShape, spec: ExperimentSpec) -> int:
    if shape.kind == "tokens":  # dims hold the vocabulary, not the length
        return spec.task.max_length or 1
    return math.prod(shape.dims)


def memory_limit() -> tuple[int, str] | None:
    """(bytes, what they are): ``$UHN_MEMORY_LIMIT_GIB`` when set, else this machine's
    physical memory; None when neither is known (no check)."""
    configured = os.environ.get(MEMORY_LIMIT_ENV)
    if configured:
        try:
            gib = float(configured)
        except ValueError:
            raise UHNError(f"{MEMORY_LIMIT_ENV}: {configured!r} is not a number of GiB (e.g. 64)") from None
        if not gib > 0:
            raise UHNError(f"{MEMORY_LIMIT_ENV}: {configured!r} must be a positive number of GiB")
        size = int(min(gib, 2.0**40) * GIB)
        return size, f"{MEMORY_LIMIT_ENV}={configured} ({format_bytes(size)})"
    try:
        size = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return size, f"this machine's {format_bytes(size)} of memory"
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(budget: Budget, purpose: Purpose, source: str | None = None) -> None:
    """Refuse, before anything is allocated, a target whose ``purpose`` cannot fit memory."""
    limit = memory_limit()
    needed = budget.needed(purpose)
    if limit is None or needed <= limit[0]:
        return
    largest = max(range(len(budget.layer_params)), key=budget.layer_params.__getitem__)
    share = budget.layer_params[largest] / max(budget.num_params, 1)
    raise SpecError(
        f"layers[{largest}]",
        f"{budget.num_params} parameters ({share:.0%} in this layer): {purpose} needs about "
        f"{format_bytes(needed)}, more than {limit[1]}; shrink the model, or set "
        f"{MEMORY_LIMIT_ENV} to the GiB to allow",
        source,
    )


def check_spec_fits(spec: ExperimentSpec, source: str, *purposes: Purpose) -> Budget:
    """The spec's budget; refuses (naming the file ``source``) a target that does not fit this
    machine for any of ``purposes``, before anything is allocated."""
    try:
        budget = estimate_budget(spec)
    except SpecError as err:
        raise SpecError(err.path, err.message, source) from None
    for purpose in purposes:
        check_fits(budget, purpose, source)
    return budget


def format_bytes(size: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size / 2**10:.1f} KiB"


__all__ = [
    "Budget",
    "check_fits",
    "check_spec_fits",
    "compile_bytes",
    "estimate_budget",
    "format_bytes",
    "memory_limit",
]
