"""Sharded generation: each rank generates a contiguous share of the generator's work units
(``unit_cuts``) and ``GatheredShares`` all-gathers the shares into the full weight vector.

Its backward sums the gradient of the full vector over ranks and hands each rank its own
share's part, so a rank's generator backward runs over its share only; generator memory per
rank falls as 1/N. It lives with the model because the generator's fast path calls it; the
training loop only creates a rank's ``GenerationShard`` (``uhn_runtime.train.distributed``
runs the process group).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch.autograd.function import FunctionCtx, once_differentiable

from uhn_spec.errors import UHNError


class ShardingError(UHNError):
    """Sharded generation does not fit the target: fewer work units than ranks."""


class RankPlace(Protocol):
    """What a shard needs to know of its process (``train.distributed.DistContext`` has it)."""

    @property
    def rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    @property
    def active(self) -> bool: ...


@dataclass(frozen=True)
class GenerationShard:
    """Generate rank ``rank``'s share of the work units and gather the rest from ``group``."""

    rank: int
    world_size: int
    group: Any = None  # a process group of its own, so its collectives never interleave DDP's

    @staticmethod
    def for_context(context: RankPlace) -> GenerationShard:
        """This process's shard: its own process group when the run has several ranks."""
        return GenerationShard(context.rank, context.world_size, dist.new_group() if context.active else None)


def unit_cuts(unit_rows: Sequence[int], world: int) -> list[int]:
    """Where the ranks' contiguous ranges of work units start and end: rank r generates units
    cuts[r]..cuts[r + 1], cut as near as can be to r / world of all rows, at least one each."""
    count = len(unit_rows)
    if count < world:
        raise ShardingError(
            f"sharded generation over {world} ranks needs at least {world} work units; this target has {count} "
            "(lower generator.chunk_rows, or train without --shard-generation)"
        )
    starts = [0]
    for rows in unit_rows:
        starts.append(starts[-1] + rows)
    cuts = [0]
    for r in range(1, world):
        goal = starts[-1] * r / world
        # A rank without a unit would have no gradients: leave one for each rank after r.
        cuts.append(min(range(cuts[-1] + 1, count - (world - r) + 1), key=lambda u: abs(starts[u] - goal)))
    return [*cuts, count]


class GatheredShares(torch.autograd.Function):
    """Forward: every rank's share (``sizes[r]`` elements each) -> the full vector, on every
    rank. Backward: the full vector's gradient summed over ranks (each rank's loss is one term
    of the objective), this rank's share of it."""

    @staticmethod
    def forward(ctx: FunctionCtx, share: torch.Tensor, sizes: tuple[int, ...], rank: int, group: Any) -> torch.Tensor:
        ctx.sizes, ctx.rank, ctx.group = sizes, rank, group  # type: ignore[attr-defined]
        longest = max(sizes)
        padded = torch.zeros(longest, dtype=share.dtype, device=share.device)
        padded[: share.numel()] = share
        pieces = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(pieces, padded, group=group)  # gloo gathers equal sizes only: pad
        return torch.cat([piece[:size] for piece, size in zip(pieces, sizes)])

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_full: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        sizes, rank = ctx.sizes, ctx.rank  # type: ignore[attr-defined]
        # all_reduce then slice: one code path for gloo and NCCL. The vector is the target's
        # weights (N floats), small next to the generator's N x d activations.
        total = grad_full.contiguous().clone()
        dist.all_reduce(total, group=ctx.group)  # type: ignore[attr-defined]
        start = sum(sizes[:rank])
        return total[start : start + sizes[rank]], None, None, None


def gather_shares(share: torch.Tensor, sizes: Sequence[int], shard: GenerationShard) -> torch.Tensor:
    """The full vector from every rank's share (``sizes``: every rank's share length, known to
    all ranks from the layout), autograd-aware: see ``GatheredShares``."""
    return GatheredShares.apply(share, tuple(sizes), shard.rank, shard.group)
