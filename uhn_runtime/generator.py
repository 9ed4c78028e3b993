"""The UHN generator H: descriptors -> one scalar weight per index row.

Layout (reference-facts §3): index path = Gaussian Fourier features of the normalised index
row -> Linear(2m, d) -> N_blk pre-activation residual blocks; optional structure path =
Fourier features of each layer's [global; task; local] row -> one Transformer encoder layer
-> mean over layers -> Linear -> ReLU -> Linear (zero-initialised), added to the index path;
then ReLU -> Linear(d, 1).

Non-trainable state (Fourier matrices B, normalisation mean and scale) lives in buffers, and
B is drawn from an explicit seeded ``torch.Generator``.

Generation never builds the N x 2m Fourier features: the input Linear runs factored per
parameter tensor (``fast_features``: per-side phasor tables, one GEMM per piece of a work
unit), then the residual blocks and head run over the unit in cache-sized passes. With
gradients each unit is one autograd node (``GeneratedUnit``) that keeps only the unit's
(rows, d) input-Linear output, or nothing past ``max_saved_bytes``, and recomputes the rest
in the backward. Memory therefore grows as O(N * d), or O(N), not O(N * 2m).
``uhn_runtime.naive`` is the same math done the direct way: the baseline and the numerical
reference.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable

from uhn_spec.descriptors import INDEX_FIELDS, STRUCTURE_FIELDS, IndexDescriptors, Ranges, normalise
from uhn_spec.spec import GeneratorSpec

from .distributed import GenerationShard, gather_shares, unit_cuts
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

# Kept for the backward, at most: the units' (rows x d) input-Linear outputs while they fit
# (0.03 GB for MNIST-MLP, 0.14 GB for CIFAR CNN-20, 0.44 GB for CNN-56), else nothing (the
# backward then recomputes the input Linear too: about a third more time).
DEFAULT_MAX_SAVED_BYTES = 2**30
# Activations per pass through the residual blocks (rows x d floats), see ``tail_rows``.
TAIL_ELEMENTS = 2**19
# Layouts of the most recent index descriptors a generator has seen (usually one per target).
LAYOUT_CACHE_SIZE = 8


class FourierEncoder(nn.Module):
    """x -> [cos(x_hat B), sin(x_hat B)], x_hat the attribute-wise normalised row.

    Always computed in fp32: under fp16 the phases (|x_hat B| up to ~1800 rad) lose up to
    0.5 rad (the authors' weak point 3).
    """

    def __init__(self, ranges: Ranges, freqs: int, sigma: float, generator: torch.Generator):
        super().__init__()
        in_dim = ranges.lo.shape[0]
        mean, inv_std = ranges.mean_and_scale()
        self.register_buffer("mean", mean.to(torch.float32))
        self.register_buffer("inv_std", inv_std.to(torch.float32))
        self.register_buffer("B", torch.randn(in_dim, freqs, generator=generator) * sigma)

    @property
    def out_dim(self) -> int:
        return 2 * self.B.shape[1]

    def phases(self, rows: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return normalise(rows, self.mean, self.inv_std, dtype) @ self.B.to(dtype)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        with torch.autocast(rows.device.type, enabled=False):
            phase = self.phases(rows)
            return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)

    def basis(self) -> FourierBasis:
        """Normalisation and B in float64, for the factored features."""
        return FourierBasis.of(self.mean, self.inv_std, self.B)


class ResidualBlock(nn.Module):
    """Pre-activation block: (ReLU -> LayerNorm -> Linear) x 2, plus the identity."""

    def __init__(self, width: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.linear1 = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.linear2 = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear1(self.norm1(torch.relu(x)))
        h = self.linear2(self.norm2(torch.relu(h)))
        return x + h


class StructureEncoder(nn.Module):
    """Per-layer structure rows -> one model embedding of width d (zero at init)."""

    def __init__(self, ranges: Ranges, spec: GeneratorSpec, generator: torch.Generator):
        super().__init__()
        self.fourier = FourierEncoder(ranges, spec.structure_freqs, spec.sigma, generator)
        width = self.fourier.out_dim
        self.encoder = nn.TransformerEncoderLayer(
            d_model=width,
            nhead=spec.structure_heads,
            dim_feedforward=width,
            dropout=0.0,
            batch_first=True,
        )
        self.proj = nn.Linear(width, spec.hidden)
        self.head = nn.Linear(spec.hidden, spec.hidden)
        # Zero init: the structure path contributes nothing at the start, so it cannot
        # disturb the index path until it has learned something useful.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, structure_rows: torch.Tensor) -> torch.Tensor:
        tokens = self.fourier(structure_rows).unsqueeze(0)  # (1, L, 2F_u)
        pooled = self.encoder(tokens).mean(dim=1)  # (1, 2F_u)
        return self.head(torch.relu(self.proj(pooled)))  # (1, d)


class UHNGenerator(nn.Module):
    """H: generates the flat weight vector of any target described by a plan."""

    def __init__(
        self,
        spec: GeneratorSpec,
        index_ranges: Ranges,
        structure_ranges: Ranges,
        seed: int = 0,
    ):
        super().__init__()
        if index_ranges.lo.shape[0] != len(INDEX_FIELDS):
            raise ValueError(f"index ranges have {index_ranges.lo.shape[0]} fields, expected {len(INDEX_FIELDS)}")
        if structure_ranges.lo.shape[0] != len(STRUCTURE_FIELDS):
            raise ValueError(
                f"structure ranges have {structure_ranges.lo.shape[0]} fields, expected {len(STRUCTURE_FIELDS)}"
            )
        self.spec = spec
        rng = torch.Generator().manual_seed(seed)
        # The structure B is drawn first, as in the authors' code; with a dedicated generator
        # the order only matters for reproducing our own runs.
        self.structure = StructureEncoder(structure_ranges, spec, rng) if spec.structure_encoder else None
        self.index_fourier = FourierEncoder(index_ranges, spec.index_freqs, spec.sigma, rng)
        self.index_in = nn.Linear(self.index_fourier.out_dim, spec.hidden)
        self.blocks = nn.ModuleList(ResidualBlock(spec.hidden) for _ in range(spec.blocks))
        self.out = nn.Linear(spec.hidden, 1)
        self.max_saved_bytes = DEFAULT_MAX_SAVED_BYTES
        # Set under torchrun with --shard-generation: this rank generates a share of the work
        # units and gathers the others' (``uhn_runtime.distributed``).
        self.shard: GenerationShard | None = None
        self._layouts: list[tuple[IndexDescriptors | torch.Tensor, tuple[int, ...], int, FactoredLayout]] = []

    def structure_embedding(self, structure_rows: torch.Tensor) -> torch.Tensor | None:
        return None if self.structure is None else self.structure(structure_rows)

    def hidden_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """Input Linear and residual blocks over materialised features (the direct way)."""
        return self.blocks_forward(self.index_in(features))

    def blocks_forward(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            h = block(h)
        return h

    def head(self, h: torch.Tensor, structure: torch.Tensor | None) -> torch.Tensor:
        if structure is not None:
            h = h + structure
        return self.out(torch.relu(h)).squeeze(-1)

    def forward(
        self,
        index: IndexDescriptors | torch.Tensor,
        structure_rows: torch.Tensor | None = None,
        chunk_rows: int | None = None,
    ) -> torch.Tensor:
        """Generate one weight per index row -> (N,) fp32. ``index`` is a target's compact
        descriptors (``TargetPlan.index``: the fast path), or explicit (N, 10) index rows in
        any order (one key per row: the same weights, without shared feature tables).

        Rows are generated in work units of at most about ``chunk_rows`` rows (default
        ``spec.chunk_rows``); the result does not depend on the unit size. What is kept for
        the backward follows ``max_saved_bytes`` (see ``saving_policy``).
        """
        structure = None
        if self.structure is not None:
            if structure_rows is None:
                raise ValueError("this generator has a structure encoder: pass structure_rows")
            structure = self.structure_embedding(structure_rows)
        device = self.index_in.weight.device
        layout = self.layout(index, chunk_rows or self.spec.chunk_rows)
        if not layout.units:
            return torch.zeros(0, device=device)
        basis = self.index_fourier.basis()
        tables = layout.tables(basis)
        own, sizes = layout, None
        if self.shard is not None and self.shard.world_size > 1:
            cuts = unit_cuts([unit.num_rows for unit in layout.units], self.shard.world_size)
            sizes = [sum(unit.num_rows for unit in layout.units[lo:hi]) for lo, hi in zip(cuts[:-1], cuts[1:])]
            own = unit_range(layout, cuts[self.shard.rank], cuts[self.shard.rank + 1])
        context = UnitContext(own, basis, tables, Workspace(device))
        if torch.is_grad_enabled():
            context = self._with_store(context)
            params = self.tail_parameters()
            parts = [GeneratedUnit.apply(self, context, i, structure, *params) for i in range(len(own.units))]
        else:
            parts = [self.unit_weights(context, i, structure) for i in range(len(own.units))]
        out = torch.cat(parts)
        if sizes is not None:
            out = gather_shares(out, sizes, self.shard)  # type: ignore[arg-type]
        return out if layout.order is None else out[layout.order]

    def tail_parameters(self) -> list[nn.Parameter]:
        """The parameters a work unit's weights depend on, in ``GeneratedUnit``'s order: the
        input Linear's weight and bias, then the residual blocks' and the head's."""
        tail = [p for module in (*self.blocks, self.out) for p in module.parameters()]
        return [self.index_in.weight, self.index_in.bias, *tail]

    def unit_weights(self, context: UnitContext, index: int, structure: torch.Tensor | None) -> torch.Tensor:
        """The generated weights of one work unit, without autograd."""
        h0 = unit_forward(context, index, self.index_in.weight, self.index_in.bias)
        out = torch.empty(h0.shape[0], device=h0.device)
        rows = self.tail_rows
        for start in range(0, h0.shape[0], rows):
            out[start : start + rows] = self.head(self.blocks_forward(h0[start : start + rows]), structure)
        return out

    @property
    def tail_rows(self) -> int:
        """Rows per pass through the residual blocks: about 2 MB of activations, which stay in
        the L2 cache (about twice as fast as one pass over a whole unit)."""
        return max(1, TAIL_ELEMENTS // self.spec.hidden)

    def _with_store(self, context: UnitContext) -> UnitContext:
        if self.saving_policy(context.layout.num_rows) != "h0":
            return context
        device = context.workspace.device
        store = torch.empty(context.layout.num_rows, self.spec.hidden, dtype=gemm_dtype(device), device=device)
        return replace(context, h0_store=store)

    def layout(self, index: IndexDescriptors | torch.Tensor, chunk_rows: int) -> FactoredLayout:
        """The work units of these descriptors (or rows), built once and cached: keyed by the
        object itself and its tensors' version counters, so an in-place change is noticed."""
        tensors = index.to_dict().values() if isinstance(index, IndexDescriptors) else (index,)
        versions = tuple(t._version for t in tensors)
        for seen, seen_versions, seen_chunk, layout in self._layouts:
            if seen is index and seen_versions == versions and seen_chunk == chunk_rows:
                return layout
        device = self.index_in.weight.device
        layout = build_layout(index, chunk_rows, self.spec.hidden, self.spec.index_freqs, device)
        self._layouts = [(index, versions, chunk_rows, layout), *self._layouts[: LAYOUT_CACHE_SIZE - 1]]
        return layout

    def saving_policy(self, num_rows: int) -> str:
        """What a forward with gradients keeps for N rows: the input-Linear outputs ("h0")
        or "nothing" (the backward recomputes them)."""
        return "h0" if num_rows * self.spec.hidden * 4 <= self.max_saved_bytes else "nothing"


def unit_range(layout: FactoredLayout, lo: int, hi: int) -> FactoredLayout:
    """Units lo..hi of ``layout`` as a layout of their own (rows concatenated in unit order; the
    same sides, so the full layout's feature tables serve it)."""
    units = layout.units[lo:hi]
    first = layout.offsets[lo]
    offsets = [offset - first for offset in layout.offsets[lo:hi]]
    return replace(layout, units=units, offsets=offsets, order=None, num_rows=sum(u.num_rows for u in units), _tables=None)


class GeneratedUnit(torch.autograd.Function):
    """One work unit's weights as one autograd node.

    The forward runs without an autograd graph (so it allocates nothing long-lived but the
    unit's weights, and its temporaries are reused rather than fragmenting the heap) and
    keeps at most the unit's input-Linear output. The backward recomputes the residual
    blocks and head pass by pass under autograd, then forms the input Linear's weight
    gradient from the factored features (``unit_weight_grad``): the features need no
    gradient, so nothing N x 2m is ever formed."""

    @staticmethod
    def forward(ctx: FunctionCtx, generator: UHNGenerator, context: UnitContext, index: int, structure: torch.Tensor | None, *params: torch.Tensor):  # type: ignore[override]
        device_type = context.workspace.device.type
        ctx.generator, ctx.context, ctx.index = generator, context, index  # type: ignore[attr-defined]
        ctx.autocast = (torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))  # type: ignore[attr-defined]
        ctx.structure = structure.detach() if structure is not None else None  # type: ignore[attr-defined]
        ctx.h0 = None  # type: ignore[attr-defined]
        out = generator.unit_weights(context, index, ctx.structure)  # type: ignore[attr-defined]
        if context.h0_store is not None:  # unit_weights wrote h0 into the store: keep it
            ctx.h0 = context.h0_buffer(index, generator.spec.hidden, context.h0_store.dtype)  # type: ignore[attr-defined]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: torch.Tensor):  # type: ignore[override]
        c = ctx  # the attributes set in forward
        generator: UHNGenerator = c.generator  # type: ignore[attr-defined]
        context: UnitContext = c.context  # type: ignore[attr-defined]
        enabled, dtype = c.autocast  # type: ignore[attr-defined]
        device_type = context.workspace.device.type
        with torch.autocast(device_type, dtype=dtype, enabled=enabled):
            h0 = c.h0  # type: ignore[attr-defined]
            if h0 is None:
                h0 = unit_forward(context, c.index, generator.index_in.weight.detach(), generator.index_in.bias.detach())  # type: ignore[attr-defined]
            grad_h0, grad_structure, grad_tail = _tail_backward(generator, context, h0, c.structure, grad_out)  # type: ignore[attr-defined]
        grad_weight, grad_bias = unit_weight_grad(context, c.index, grad_h0, generator.spec.hidden)  # type: ignore[attr-defined]
        return (None, None, None, grad_structure, grad_weight, grad_bias, *grad_tail)


def _tail_backward(
    generator: UHNGenerator, context: UnitContext, h0: torch.Tensor, structure: torch.Tensor | None, grad_out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor | None]]:
    """Recompute the residual blocks and head pass by pass; return the gradients of h0 (in
    a workspace buffer), of the structure embedding and of the tail's parameters (None for
    a frozen one)."""
    tail = generator.tail_parameters()[2:]
    trained = [p for p in tail if p.requires_grad]
    grad_h0 = context.workspace.take("grad_h0", tuple(h0.shape), h0.dtype)
    sums = [torch.zeros_like(p) for p in trained]
    grad_structure = None if structure is None else torch.zeros_like(structure)
    rows = generator.tail_rows
    for start in range(0, h0.shape[0], rows):
        h = h0[start : start + rows].detach().requires_grad_()
        s = None if structure is None else structure.detach().requires_grad_()
        with torch.enable_grad():
            y = generator.head(generator.blocks_forward(h), s).float()
        grads = torch.autograd.grad(y, [h, *trained, *([s] if s is not None else [])], grad_out[start : start + rows])
        grad_h0[start : start + rows] = grads[0]
        for total, g in zip(sums, grads[1 : 1 + len(trained)]):
            total += g
        if grad_structure is not None:
            grad_structure += grads[-1]
    by_param = iter(sums)
    return grad_h0, grad_structure, [next(by_param) if p.requires_grad else None for p in tail]


def count_generator_params(spec: GeneratorSpec) -> tuple[int, int]:
    """(trainable, total) parameter counts. ``total`` adds the non-trainable Fourier matrices
    and normalisation statistics, as the paper's headline numbers do (612,117 = 591,617 +
    20,500 for the default config)."""
    index = Ranges(torch.zeros(len(INDEX_FIELDS)), torch.ones(len(INDEX_FIELDS)))
    structure = Ranges(torch.zeros(len(STRUCTURE_FIELDS)), torch.ones(len(STRUCTURE_FIELDS)))
    with torch.device("meta"):
        model = UHNGenerator(spec, index, structure)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    buffers = sum(b.numel() for b in model.buffers())
    return trainable, trainable + buffers
