"""What one `uhn bench` run measures, as its worker processes receive it (JSON)."""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30
# The naive generator runs only if its estimated peak stays below this and below the
# memory the machine has available (minus a margin for everything else running).
DEFAULT_NAIVE_MAX_BYTES = 16 * GIB


@dataclass(frozen=True)
class BenchOptions:
    repeats: int = 5
    batch: int = 256
    device: str = "cpu"
    precision: str = "fp32"  # fp32, bf16 (autocast for the matmuls) or auto (as training resolves it)
    target: str | None = None
    naive: bool = True
    naive_max_bytes: int = DEFAULT_NAIVE_MAX_BYTES
    target_segments: int | None = None  # the target's activation checkpointing in the train step; None: the spec's
    seed: int = 0
    square: int | None = None  # side of the peak's square product; None: peak_square's choice
