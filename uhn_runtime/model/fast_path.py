"""The generator's fast path: generate a target's weights work unit by work unit, without
ever forming the N x 2m Fourier features.

The input Linear runs factored per parameter tensor (``fast_features``: per-side phasor
tables, one GEMM per piece of a work unit), then the residual blocks and head (the "tail")
run over the unit in cache-sized passes. With gradients each unit is one autograd node
(``GeneratedUnit``) that keeps only the unit's (rows, d) input-Linear output, or nothing past
``max_saved_bytes``, and recomputes the rest in the backward. Memory therefore grows as
O(N * d), or O(N), not O(N * 2m).

``generate_layout`` takes the parameters it reads as arguments: the input Linear's weight and
bias, then whatever the network's ``tail`` reads (``TailNetwork``). A ``UHNGenerator`` passes
its own parameters; a ``GeneratedGenerator`` (recursive generation) passes tensors generated
by the level above, and the backward sends their gradients there. A module of its own so
that both generators share it without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

import torch
from torch.autograd.function import FunctionCtx, once_differentiable

from uhn_spec.descriptors import IndexDescriptors

from .fast_features import (
    FactoredLayout,
    FourierBasis,
    UnitContext,
    Workspace,
    build_layout,
    gemm_dtype,
    unit_forward,
    unit_weight_grad,
)
from .generation_shard import GenerationShard, gather_shares, unit_cuts

# Kept for the backward, at most: the units' (rows x d) input-Linear outputs while they fit
# (0.03 GB for MNIST-MLP, 0.14 GB for CIFAR CNN-20, 0.44 GB for CNN-56), else nothing (the
# backward then recomputes the input Linear too).
DEFAULT_MAX_SAVED_BYTES = 2**30
# Activations per pass through the residual blocks (rows x d floats), see ``tail_rows``.
TAIL_ELEMENTS = 2**19
# Layouts of the most recent index descriptors a generator has seen (usually one per target);
# a family run raises its generator's ``layout_cache_size`` to its target cache's capacity.
LAYOUT_CACHE_SIZE = 8


class TailNetwork(Protocol):
    """What the fast path needs of a generator besides its input Linear: its width and its
    "tail" (everything after the input Linear: hidden layers, structure add, head) as a
    function of explicit parameters, so that the same work units, recompute and backward
    serve a trained ``UHNGenerator`` and a generated one (``GeneratedGenerator``) alike."""

    @property
    def hidden(self) -> int: ...

    def tail(self, h: torch.Tensor, structure: torch.Tensor | None, params: Sequence[torch.Tensor]) -> torch.Tensor: ...


class LayoutCache:
    """Work units of the most recent index descriptors (or rows), built once: keyed by the
    object itself and its tensors' version counters, so an in-place change is noticed."""

    def __init__(self, hidden: int, freqs: int, capacity: int = LAYOUT_CACHE_SIZE):
        self.hidden, self.freqs, self.capacity = hidden, freqs, capacity
        self._layouts: list[tuple[IndexDescriptors | torch.Tensor, tuple[int, ...], int, FactoredLayout]] = []

    def get(self, index: IndexDescriptors | torch.Tensor, chunk_rows: int, device: torch.device) -> FactoredLayout:
        tensors = index.to_dict().values() if isinstance(index, IndexDescriptors) else (index,)
        versions = tuple(t._version for t in tensors)
        for seen, seen_versions, seen_chunk, layout in self._layouts:
            if seen is index and seen_versions == versions and seen_chunk == chunk_rows:
                return layout
        layout = build_layout(index, chunk_rows, self.hidden, self.freqs, device)
        self._layouts = [(index, versions, chunk_rows, layout), *self._layouts[: self.capacity - 1]]
        return layout


def generate_layout(
    net: TailNetwork,
    layout: FactoredLayout,
    basis: FourierBasis,
    structure: torch.Tensor | None,
    params: Sequence[torch.Tensor],
    max_saved_bytes: int,
    shard: GenerationShard | None = None,
) -> torch.Tensor:
    """The fast path: the weights of every row of ``layout``, (N,) in the target's order.
    ``params`` are the input Linear's weight and bias, then the tail's parameters (what
    ``net.tail`` reads); with gradients each work unit is one ``GeneratedUnit`` node whose
    backward reaches ``params`` and ``structure``, whether they are leaves or generated.
    With a ``shard`` of several ranks this rank generates a contiguous share of the units and
    gathers the others' (an autograd-aware all-gather: see ``uhn_runtime.train.distributed``)."""
    device = params[0].device
    if not layout.units:
        return torch.zeros(0, device=device)
    tables = layout.tables(basis)
    own, sizes = layout, None
    if shard is not None and shard.world_size > 1:
        cuts = unit_cuts([unit.num_rows for unit in layout.units], shard.world_size)
        sizes = [sum(unit.num_rows for unit in layout.units[lo:hi]) for lo, hi in zip(cuts[:-1], cuts[1:])]
        own = unit_range(layout, cuts[shard.rank], cuts[shard.rank + 1])
    context = UnitContext(own, basis, tables, Workspace(device))
    if torch.is_grad_enabled():
        if saving_policy(own.num_rows, net.hidden, max_saved_bytes) == "h0":
            store = torch.empty(own.num_rows, net.hidden, dtype=gemm_dtype(device), device=device)
            context = replace(context, h0_store=store)
        parts = [GeneratedUnit.apply(net, context, i, structure, *params) for i in range(len(own.units))]
    else:
        parts = [unit_weights(net, context, i, structure, params) for i in range(len(own.units))]
    out = torch.cat(parts) if parts else torch.zeros(0, device=device)
    if sizes is not None:
        out = gather_shares(out, sizes, shard)  # type: ignore[arg-type]  # sharded: sizes are set
    return out if layout.order is None else out[layout.order]


def saving_policy(num_rows: int, hidden: int, max_saved_bytes: int) -> str:
    """What a forward with gradients keeps for N rows: the input-Linear outputs ("h0")
    or "nothing" (the backward recomputes them)."""
    return "h0" if num_rows * hidden * 4 <= max_saved_bytes else "nothing"


def tail_rows(hidden: int) -> int:
    """Rows per pass through the tail: about 2 MB of activations, which stay in the L2 cache
    (faster than one pass over a whole unit)."""
    return max(1, TAIL_ELEMENTS // hidden)


def unit_weights(
    net: TailNetwork, context: UnitContext, index: int, structure: torch.Tensor | None, params: Sequence[torch.Tensor]
) -> torch.Tensor:
    """The generated weights of one work unit, without autograd."""
    with torch.no_grad():
        h0 = unit_forward(context, index, params[0], params[1])
        out = torch.empty(h0.shape[0], device=h0.device)
        rows = tail_rows(net.hidden)
        for start in range(0, h0.shape[0], rows):
            out[start : start + rows] = net.tail(h0[start : start + rows], structure, params[2:])
    return out


def unit_range(layout: FactoredLayout, lo: int, hi: int) -> FactoredLayout:
    """Units lo..hi of ``layout`` as a layout of their own (rows concatenated in unit order; the
    same sides, so the full layout's feature tables serve it)."""
    units = layout.units[lo:hi]
    first = layout.offsets[lo]
    offsets = [offset - first for offset in layout.offsets[lo:hi]]
    num_rows = sum(u.num_rows for u in units)
    return replace(layout, units=units, offsets=offsets, order=None, num_rows=num_rows, _tables=None)


class GeneratedUnit(torch.autograd.Function):
    """One work unit's weights as one autograd node.

    The forward runs without an autograd graph (so it allocates nothing long-lived but the
    unit's weights, and its temporaries are reused rather than fragmenting the heap) and
    keeps at most the unit's input-Linear output. The backward recomputes the tail pass by
    pass under autograd, then forms the input Linear's weight gradient from the factored
    features (``unit_weight_grad``): the features need no gradient, so nothing N x 2m is
    ever formed. ``params`` may be trained leaves or tensors generated by another generator:
    gradients go to whichever of them (and of ``structure``) need one."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        net: TailNetwork,
        context: UnitContext,
        index: int,
        structure: torch.Tensor | None,
        *params: torch.Tensor,
    ) -> torch.Tensor:
        device_type = context.workspace.device.type
        ctx.net, ctx.context, ctx.index = net, context, index  # type: ignore[attr-defined]
        ctx.autocast = (torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))  # type: ignore[attr-defined]
        ctx.structure = structure.detach() if structure is not None else None  # type: ignore[attr-defined]
        ctx.params = [p.detach() for p in params]  # type: ignore[attr-defined]
        ctx.h0 = None  # type: ignore[attr-defined]
        out = unit_weights(net, context, index, ctx.structure, ctx.params)  # type: ignore[attr-defined]
        if context.h0_store is not None:  # unit_weights wrote h0 into the store: keep it
            ctx.h0 = context.h0_buffer(index, net.hidden, context.h0_store.dtype)  # type: ignore[attr-defined]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        c = ctx  # the attributes set in forward
        net: TailNetwork = c.net  # type: ignore[attr-defined]
        context: UnitContext = c.context  # type: ignore[attr-defined]
        params: list[torch.Tensor] = c.params  # type: ignore[attr-defined]
        needs = c.needs_input_grad  # type: ignore[attr-defined]
        enabled, dtype = c.autocast  # type: ignore[attr-defined]
        device_type = context.workspace.device.type
        with torch.autocast(device_type, dtype=dtype, enabled=enabled):
            h0 = c.h0  # type: ignore[attr-defined]
            # The saved h0 is overwritten by its gradient below: a second backward through
            # this node (retain_graph) recomputes it.
            c.h0 = None  # type: ignore[attr-defined]
            if h0 is None:
                h0 = unit_forward(context, c.index, params[0], params[1])  # type: ignore[attr-defined]
            wanted = [bool(n) for n in needs[6:]]
            grad_h0, grad_structure, grad_tail = _tail_backward(net, h0, c.structure, params[2:], wanted, grad_out)  # type: ignore[attr-defined]
        grad_weight, grad_bias = unit_weight_grad(context, c.index, grad_h0, net.hidden)  # type: ignore[attr-defined]
        grad_structure = grad_structure if needs[3] else None
        return (None, None, None, grad_structure, grad_weight, grad_bias, *grad_tail)


def _tail_backward(
    net: TailNetwork,
    h0: torch.Tensor,
    structure: torch.Tensor | None,
    tail: Sequence[torch.Tensor],
    wanted: Sequence[bool],
    grad_out: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor | None]]:
    """Recompute the tail pass by pass; return the gradients of h0, of the structure
    embedding and of the tail's parameters (None where not ``wanted``).

    The gradient of h0 is written over h0 itself, pass by pass (a pass's rows are not read
    again once its gradient is formed): a unit-sized buffer (16 MiB at 32,768 rows, d = 128)
    less at the peak of every backward, which is most of what does not shrink per rank under
    sharded generation (docs/distributed.md)."""
    leaves = [p.detach().requires_grad_(w) for p, w in zip(tail, wanted)]
    trained = [p for p in leaves if p.requires_grad]
    grad_h0 = h0
    sums = [torch.zeros_like(p) for p in trained]
    grad_structure = None if structure is None else torch.zeros_like(structure)
    rows = tail_rows(net.hidden)
    for start in range(0, h0.shape[0], rows):
        h = h0[start : start + rows].detach().requires_grad_()
        s = None if structure is None else structure.detach().requires_grad_()
        with torch.enable_grad():
            y = net.tail(h, s, leaves).float()
        grads = torch.autograd.grad(y, [h, *trained, *([s] if s is not None else [])], grad_out[start : start + rows])
        grad_h0[start : start + rows] = grads[0]
        for total, g in zip(sums, grads[1 : 1 + len(trained)]):
            total += g
        if grad_structure is not None:
            grad_structure += grads[-1]
    by_param = iter(sums)
    return grad_h0, grad_structure, [next(by_param) if p.requires_grad else None for p in leaves]
