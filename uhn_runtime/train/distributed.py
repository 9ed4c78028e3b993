"""Training on several processes with PyTorch's own distributed stack, launched by torchrun.

``torchrun --nproc-per-node N $(which uhn) train SPEC`` starts N copies of ``uhn train``;
torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and the rendezvous address), and
``distributed_session`` joins them into one process group (gloo on the CPU, NCCL on CUDA).
Without those variables everything here is the identity: one process, rank 0 of 1.

Exact data parallel (chosen with ``uhn train --exact`` or ``--micro-shards N``, where it
applies; ``steps.ExactStep``): every batch
is cut into a fixed number of micro-shards (``micro_shard``), whatever the world size; each
rank computes the generated weights' gradient of its own micro-shards
(``owned_micro_shards``), ``exchange_micro_shards`` all-gathers them and every rank adds them
in micro-shard order (``ordered_sum``), then runs one identical backward through its whole
weight source: N processes take the steps of one, bit for bit where the operations do not
depend on the thread count (docs/distributed.md).

DDP's data parallel (the default, ``micro_shards=0``; and families, multi-task, sharded
generation and BatchNorm targets): every rank holds the whole weight source, wrapped in
DistributedDataParallel (``synced_flat``), and takes a contiguous share of each global batch
(``shard_batch``). Its loss is scaled by ``world * local / global`` examples, so DDP's
gradient average is the gradient of the global-batch mean: N processes take the steps of
one, to float rounding. Graph tasks (one full-graph batch) split the counted nodes instead:
every rank runs the whole graph and takes the loss of its share of the training nodes.

Sharded generation (``uhn_runtime.model.generation_shard``): each rank generates a contiguous
share of the generator's work units and gathers the others'; the run gives each rank its
``GenerationShard``. DDP's average of the per-rank parameter gradients then gives the gradient
of the mean of the ranks' losses, as without sharding.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from uhn_spec.errors import UHNError

from ..data import Batch
from .run_record import DEFAULT_MICRO_SHARDS  # noqa: F401 (the exact path's count; defined beside its bound)

# Environment variables torchrun sets in every process it starts.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# How long a rank waits for its peers in one collective before giving up: long enough for
# another rank's evaluation or checkpoint, short enough that a dead peer is noticed.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)

T = TypeVar("T")


class DistributedError(UHNError):
    """The torchrun environment is incomplete or does not fit the run."""


class LostContact(Exception):
    """A collective failed because another process of the run died or hung up (gloo's
    "Connection closed by peer", NCCL's errors): neither bad input nor a bug here. The run
    keeps its last checkpoint and resumes from it."""

    def __init__(self, rank: int, cause: str):
        super().__init__(f"rank {rank}: lost contact with another process ({cause})")
        self.rank = rank
        self.cause = cause


# torch's errors of the distributed stack (DistBackendError, DistNetworkError, DistStoreError);
# gloo's transport failures come as a plain RuntimeError that names gloo's transport code.
DIST_ERRORS: tuple[type[BaseException], ...] = tuple(
    error for error in (getattr(dist, "DistError", None),) if isinstance(error, type)
)
GLOO_TRANSPORT = "gloo/transport/"
CAUSE_CHARS = 160


def is_lost_contact(error: BaseException) -> bool:
    """Whether ``error`` is a collective's failure to reach another process of the run."""
    return isinstance(error, DIST_ERRORS) or (isinstance(error, RuntimeError) and GLOO_TRANSPORT in str(error))


def contact_failure(error: BaseException) -> str:
    """The failure in a few words: the message's first sentence on one line, without gloo's
    source location, e.g. "Read error [127.0.0.1]:30644: Connection reset by peer"."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", " ".join(str(error).split()))
    first = text.split(". ", 1)[0].rstrip(".") or type(error).__name__
    return first if len(first) <= CAUSE_CHARS else first[: CAUSE_CHARS - 3] + "..."


@contextlib.contextmanager
def lost_contact_reported(context: DistContext) -> Iterator[None]:
    """Turn a collective's failure to reach another process into ``LostContact``: the one
    line the command prints, not the backend's traceback. Other errors pass unchanged."""
    try:
        yield
    except Exception as error:
        if context.active and is_lost_contact(error):
            raise LostContact(context.rank, contact_failure(error)) from None
        raise


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run: rank ``rank`` of ``world_size`` (0 of 1 alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes the run folder, checkpoints, metrics and summary."""
        return self.rank == 0

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (a picklable object)."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, action: Callable[[], object]) -> None:
        """Run ``action`` on rank 0 alone; its UHNError is raised on every rank (so a refused
        run folder stops all ranks with the same line, not rank 0 alone)."""
        failure: tuple[type[UHNError], str] | None = None
        if self.is_main:
            try:
                action()
            except UHNError as err:
                if not self.active:
                    raise
                failure = (type(err), str(err))
        failure = self.broadcast(failure)
        if failure is not None:
            error_type, message = failure
            raise error_type(message)


def environment_context(environ: dict[str, str] | None = None) -> DistContext:
    """The context torchrun's variables describe; rank 0 of 1 when they are absent."""
    env = os.environ if environ is None else environ
    present = [name for name in TORCHRUN_ENV if name in env]
    if not present:
        return DistContext()
    if len(present) != len(TORCHRUN_ENV):
        missing = ", ".join(name for name in TORCHRUN_ENV if name not in env)
        raise DistributedError(
            f"environment: {missing}: not set; start distributed runs with torchrun, "
            f"which sets all of {', '.join(TORCHRUN_ENV)}"
        )
    try:
        rank, world, local = (int(env[name]) for name in TORCHRUN_ENV)
    except ValueError:
        raise DistributedError(
            f"environment: RANK/WORLD_SIZE/LOCAL_RANK must be integers, got {[env[n] for n in TORCHRUN_ENV]}"
        ) from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise DistributedError(
            f"environment: RANK {rank} of WORLD_SIZE {world} (LOCAL_RANK {local}) is not a valid rank"
        )
    return DistContext(rank, world, local)


def backend_for(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


@contextlib.contextmanager
def distributed_session(device_type: str) -> Iterator[DistContext]:
    """Join torchrun's process group for the run (and leave it after); the identity alone.
    A collective that cannot reach another process (it died) raises ``LostContact``.

    A process group that the caller already set up (a script, a test) is used as it is and
    left open. On CUDA each rank uses the device LOCAL_RANK."""
    if dist.is_available() and dist.is_initialized():
        context = DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
        with lost_contact_reported(context):
            yield context
        return
    context = environment_context()
    if not context.active:
        yield context
        return
    if device_type == "cuda":
        torch.cuda.set_device(context.local_rank)
    dist.init_process_group(backend_for(device_type), timeout=COLLECTIVE_TIMEOUT)
    try:
        with lost_contact_reported(context):
            yield context
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- data parallel


def share_bounds(count: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous share [lo, hi) of ``count`` items: sizes differ by at most one."""
    return count * rank // world, count * (rank + 1) // world


def shard_batch(batch: Batch, rank: int, world: int) -> tuple[Batch, float]:
    """This rank's share of one global batch and its share of the examples that count
    (local / global). A graph batch keeps the whole graph (message passing needs every node)
    and splits the counted nodes of its node mask."""
    if world == 1:
        return batch, 1.0
    if batch.node_mask is not None:
        nodes = batch.node_mask.nonzero().squeeze(1)
        lo, hi = share_bounds(len(nodes), rank, world)
        mask = torch.zeros_like(batch.node_mask)
        mask[nodes[lo:hi]] = True
        return replace(batch, node_mask=mask), (hi - lo) / max(len(nodes), 1)
    count = batch.targets.shape[0]
    lo, hi = share_bounds(count, rank, world)
    padding = None if batch.padding_mask is None else batch.padding_mask[lo:hi]
    share = replace(batch, inputs=batch.inputs[lo:hi], targets=batch.targets[lo:hi], padding_mask=padding)
    return share, (hi - lo) / max(count, 1)


def rank_seed(seed: int, step: int, rank: int) -> int:
    """The seed of one rank's random draws at one step (dropout now; per-rank architecture or
    task draws of multi-model plans next): a pure function, so a resumed run draws the same."""
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729 + 23) % (2**63)


class _FlatForward(nn.Module):
    """A weight source whose forward is ``flat()``: what DistributedDataParallel wraps."""

    def __init__(self, source: nn.Module):
        super().__init__()
        self.source = source

    def forward(self, target: Any = None) -> torch.Tensor:
        return self.source.flat(target)  # type: ignore[operator]  # a weight source's method, typed by nn.Module as a tensor


def synced_flat(source: nn.Module, context: DistContext, device: torch.device) -> Callable[..., torch.Tensor]:
    """``source.flat`` alone; under torchrun ``flat(target)`` through DistributedDataParallel, whose
    backward averages the parameter gradients over ranks. DDP broadcasts rank 0's parameters
    once here. Buffers (Fourier matrices, normalisation) are a function of the seed: not sent."""
    if not context.active:
        return source.flat  # type: ignore[return-value]  # as above: a method, not a submodule
    device_ids = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    )
    ddp = nn.parallel.DistributedDataParallel
    # torch 2.13 renamed the option (the old one warns); earlier versions know only the old.
    no_buffer_sync = (
        "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters else "broadcast_buffers"
    )
    options: dict[str, Any] = {no_buffer_sync: False}
    return ddp(_FlatForward(source), device_ids=device_ids, **options)


@dataclass(frozen=True)
class StepReport:
    """What every rank agrees on after a step: the global-batch loss and whether any rank got
    a stop signal (the one to act on; SIGTERM before SIGINT)."""

    loss: float
    signal: int | None


def agree_on_step(
    context: DistContext, loss_share: float, signal: int | None, stop_signals: Sequence[int]
) -> StepReport:
    """Sum the ranks' loss shares (each local mean x local/global examples: the global mean)
    and collect their stop requests, in one all-reduce."""
    if not context.active:
        return StepReport(loss_share, signal)
    flags = [1.0 if signal == s else 0.0 for s in stop_signals]
    values = torch.tensor([loss_share, *flags], dtype=torch.float64)
    dist.all_reduce(values)
    raised = [s for s, flag in zip(stop_signals, values[1:].tolist()) if flag > 0]
    return StepReport(float(values[0]), max(raised) if raised else None)


# --------------------------------------------------------------------------- exact data parallel


def owned_micro_shards(count: int, rank: int, world: int) -> range:
    """The micro-shards (of ``count`` per batch) whose gradients rank ``rank`` computes: a
    contiguous range (none for ranks past ``count``)."""
    return range(*share_bounds(count, rank, world))


def micro_shard(batch: Batch, index: int, count: int) -> tuple[Batch, float]:
    """Micro-shard ``index`` of ``count`` of one global batch and its share of the examples
    (the examples of a batch, contiguous, sizes differing by at most one)."""
    return shard_batch(batch, index, count) if count > 1 else (batch, 1.0)


def exchange_micro_shards(
    context: DistContext, own: Sequence[torch.Tensor], count: int, width: int, device: torch.device
) -> list[torch.Tensor]:
    """Every micro-shard's ``width``-float vector, on every rank, in micro-shard order (rank r
    computed those ``owned_micro_shards`` gives it, in ``own``): one all-gather, padded to the
    longest share (gloo gathers equal sizes only)."""
    shares = [len(owned_micro_shards(count, r, context.world_size)) for r in range(context.world_size)]
    padded = torch.zeros(max(shares), width, device=device)
    for row, vector in zip(padded, own):
        row.copy_(vector)
    pieces = [torch.empty_like(padded) for _ in shares]
    dist.all_gather(pieces, padded)
    return [row for piece, share in zip(pieces, shares) for row in piece[:share]]


def ordered_sum(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``vectors[0] + vectors[1] + ...``, left to right: the same bits on every rank and on
    any thread count (elementwise adds, one order)."""
    total = vectors[0].clone()
    for vector in vectors[1:]:
        total += vector
    return total


def broadcast_parameters(module: nn.Module, context: DistContext) -> None:
    """Rank 0's parameters on every rank (what DistributedDataParallel does as it wraps a
    module; the exact path, which needs no DDP, does it itself)."""
    if context.active:
        with torch.no_grad():
            for p in module.parameters():
                dist.broadcast(p.data, src=0)
