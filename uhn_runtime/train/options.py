"""How a run trains (``TrainOptions``), what it tells an observer after each step, and what a
phase gives back (``PhaseResult``).

An observer is any object with an ``after_step(event)`` method: a researcher's own
logging, an early stop (raise), or a test that stops a run as a kill would. It sees each
step after its optimiser update and its log record (at an interval's end), before a stop
request (Ctrl-C) is acted on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol, TextIO

from ..model.weights import SourceKind

Mode = Literal["uhn", "direct", "both"]
MODE_PHASES: dict[str, tuple[SourceKind, ...]] = {"uhn": ("uhn",), "direct": ("direct",), "both": ("uhn", "direct")}


@dataclass(frozen=True)
class StepEvent:
    """One optimiser step of the task phase, as an observer sees it."""

    kind: SourceKind
    step: int  # 0-based task-phase step just taken
    units_done: int  # finished epochs (or steps) after it
    unit_end: bool  # the step closed an epoch (or a step unit)
    last: bool  # the phase's final step
    targets: tuple[str, ...]  # the targets it trained
    batch_sizes: tuple[int, ...]  # their batches' example counts
    loss: float


@dataclass(frozen=True)
class PhaseResult:
    kind: SourceKind
    value: float  # the test metric; of a family: the mean over its evaluated seen models
    seconds: float
    models: dict[str, float] | None = None  # several targets: each evaluated one's test metric
    record: dict[str, Any] | None = None  # what the sampler and the step strategy add to summary.json
    step: str = "plain"  # the step strategy's name (``steps.py``): plain, ddp, exact or pcgrad


class Observer(Protocol):
    def after_step(self, event: StepEvent) -> None: ...


@dataclass(frozen=True)
class TrainOptions:
    mode: Mode = "uhn"
    device: str = "auto"
    data_root: str | None = None
    # Also write TensorBoard event files (as the spec's train.tensorboard; either turns it on).
    tensorboard: bool = False
    progress: TextIO | None = None
    # A killed run loses at most about this much work. Checkpointing after every sub-second
    # epoch (full-batch graphs and formulas) would cost more than the epochs themselves.
    checkpoint_seconds: float = 60.0
    # Under torchrun: each rank generates a share of the work units (docs/distributed.md).
    shard_generation: bool = False
    # Exact data parallel, a choice (`uhn train --exact`: distributed.DEFAULT_MICRO_SHARDS):
    # each batch's gradient as the ordered sum of this many micro-shards' gradients, the same
    # bits on any number of processes and threads, at a cost. 0, the default: the fast step
    # (one process: the plain step; torchrun: DistributedDataParallel's average), which
    # resumes bit-exactly all the same (docs/distributed.md). Where the exact step does not
    # apply the run takes DDP's path.
    micro_shards: int = 0
    observers: tuple[Observer, ...] = ()
