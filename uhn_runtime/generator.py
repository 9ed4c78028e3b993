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

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable
from torch.func import functional_call

from uhn_spec.descriptors import INDEX_FIELDS, STRUCTURE_FIELDS, IndexDescriptors, Ranges, normalise
from uhn_spec.layers.base import ForwardContext
from uhn_spec.spec import GeneratorSpec

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

if TYPE_CHECKING:
    from .target import DeviceTarget

# Kept for the backward, at most: the units' (rows x d) input-Linear outputs while they fit
# (0.03 GB for MNIST-MLP, 0.14 GB for CIFAR CNN-20, 0.44 GB for CNN-56), else nothing (the
# backward then recomputes the input Linear too: about a third more time).
DEFAULT_MAX_SAVED_BYTES = 2**30
# Activations per pass through the residual blocks (rows x d floats), see ``tail_rows``.
TAIL_ELEMENTS = 2**19
# Layouts of the most recent index descriptors a generator has seen (usually one per target).
LAYOUT_CACHE_SIZE = 8
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, as in the authors' residual blocks


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
        return residual_block(x, *self.parameters())


def residual_block(x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
    """``ResidualBlock`` with its parameters as arguments (in ``parameters()`` order: norm1
    weight and bias, linear1 weight and bias, norm2 ..., linear2 ...)."""
    n1w, n1b, l1w, l1b, n2w, n2b, l2w, l2b = params
    h = F.linear(F.layer_norm(torch.relu(x), n1w.shape, n1w, n1b, LAYER_NORM_EPS), l1w, l1b)
    h = F.linear(F.layer_norm(torch.relu(h), n2w.shape, n2w, n2b, LAYER_NORM_EPS), l2w, l2b)
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

    def __init__(self, hidden: int, freqs: int):
        self.hidden, self.freqs = hidden, freqs
        self._layouts: list[tuple[IndexDescriptors | torch.Tensor, tuple[int, ...], int, FactoredLayout]] = []

    def get(self, index: IndexDescriptors | torch.Tensor, chunk_rows: int, device: torch.device) -> FactoredLayout:
        tensors = index.to_dict().values() if isinstance(index, IndexDescriptors) else (index,)
        versions = tuple(t._version for t in tensors)
        for seen, seen_versions, seen_chunk, layout in self._layouts:
            if seen is index and seen_versions == versions and seen_chunk == chunk_rows:
                return layout
        layout = build_layout(index, chunk_rows, self.hidden, self.freqs, device)
        self._layouts = [(index, versions, chunk_rows, layout), *self._layouts[: LAYOUT_CACHE_SIZE - 1]]
        return layout


def generate_layout(
    net: TailNetwork,
    layout: FactoredLayout,
    basis: FourierBasis,
    structure: torch.Tensor | None,
    params: Sequence[torch.Tensor],
    max_saved_bytes: int,
) -> torch.Tensor:
    """The fast path: the weights of every row of ``layout``, (N,) in the target's order.
    ``params`` are the input Linear's weight and bias, then the tail's parameters (what
    ``net.tail`` reads); with gradients each work unit is one ``GeneratedUnit`` node whose
    backward reaches ``params`` and ``structure``, whether they are leaves or generated."""
    device = params[0].device
    if not layout.units:
        return torch.zeros(0, device=device)
    context = UnitContext(layout, basis, layout.tables(basis), Workspace(device))
    if torch.is_grad_enabled():
        if saving_policy(layout.num_rows, net.hidden, max_saved_bytes) == "h0":
            store = torch.empty(layout.num_rows, net.hidden, dtype=gemm_dtype(device), device=device)
            context = replace(context, h0_store=store)
        parts = [GeneratedUnit.apply(net, context, i, structure, *params) for i in range(len(layout.units))]
    else:
        parts = [unit_weights(net, context, i, structure, params) for i in range(len(layout.units))]
    out = torch.cat(parts)
    return out if layout.order is None else out[layout.order]


def saving_policy(num_rows: int, hidden: int, max_saved_bytes: int) -> str:
    """What a forward with gradients keeps for N rows: the input-Linear outputs ("h0")
    or "nothing" (the backward recomputes them)."""
    return "h0" if num_rows * hidden * 4 <= max_saved_bytes else "nothing"


def tail_rows(hidden: int) -> int:
    """Rows per pass through the tail: about 2 MB of activations, which stay in the L2 cache
    (about twice as fast as one pass over a whole unit)."""
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
        self._layouts = LayoutCache(spec.hidden, spec.index_freqs)

    @property
    def hidden(self) -> int:
        return self.spec.hidden

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

    def tail(self, h: torch.Tensor, structure: torch.Tensor | None, params: Sequence[torch.Tensor]) -> torch.Tensor:
        """``head(blocks_forward(h), structure)`` with the tail's parameters as arguments
        (``tail_parameters()[2:]``), for the fast path's recompute."""
        per_block = len(params[:-2]) // max(len(self.blocks), 1)
        for b in range(len(self.blocks)):
            h = residual_block(h, *params[b * per_block : (b + 1) * per_block])
        if structure is not None:
            h = h + structure
        return F.linear(torch.relu(h), params[-2], params[-1]).squeeze(-1)

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
        layout = self.layout(index, chunk_rows or self.spec.chunk_rows)
        basis = self.index_fourier.basis()
        return generate_layout(self, layout, basis, structure, self.tail_parameters(), self.max_saved_bytes)

    def tail_parameters(self) -> list[nn.Parameter]:
        """The parameters a work unit's weights depend on, in ``GeneratedUnit``'s order: the
        input Linear's weight and bias, then the residual blocks' and the head's."""
        tail = [p for module in (*self.blocks, self.out) for p in module.parameters()]
        return [self.index_in.weight, self.index_in.bias, *tail]

    @property
    def tail_rows(self) -> int:
        return tail_rows(self.spec.hidden)

    def layout(self, index: IndexDescriptors | torch.Tensor, chunk_rows: int) -> FactoredLayout:
        """The work units of these descriptors (or rows), built once and cached."""
        return self._layouts.get(index, chunk_rows, self.index_in.weight.device)

    def saving_policy(self, num_rows: int) -> str:
        return saving_policy(num_rows, self.spec.hidden, self.max_saved_bytes)


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
    def forward(ctx: FunctionCtx, net: TailNetwork, context: UnitContext, index: int, structure: torch.Tensor | None, *params: torch.Tensor):  # type: ignore[override]
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
    def backward(ctx: FunctionCtx, grad_out: torch.Tensor):  # type: ignore[override]
        c = ctx  # the attributes set in forward
        net: TailNetwork = c.net  # type: ignore[attr-defined]
        context: UnitContext = c.context  # type: ignore[attr-defined]
        params: list[torch.Tensor] = c.params  # type: ignore[attr-defined]
        needs = c.needs_input_grad  # type: ignore[attr-defined]
        enabled, dtype = c.autocast  # type: ignore[attr-defined]
        device_type = context.workspace.device.type
        with torch.autocast(device_type, dtype=dtype, enabled=enabled):
            h0 = c.h0  # type: ignore[attr-defined]
            if h0 is None:
                h0 = unit_forward(context, c.index, params[0], params[1])  # type: ignore[attr-defined]
            wanted = [bool(n) for n in needs[6:]]
            grad_h0, grad_structure, grad_tail = _tail_backward(net, context, h0, c.structure, params[2:], wanted, grad_out)  # type: ignore[attr-defined]
        grad_weight, grad_bias = unit_weight_grad(context, c.index, grad_h0, net.hidden)  # type: ignore[attr-defined]
        grad_structure = grad_structure if needs[3] else None
        return (None, None, None, grad_structure, grad_weight, grad_bias, *grad_tail)


def _tail_backward(
    net: TailNetwork,
    context: UnitContext,
    h0: torch.Tensor,
    structure: torch.Tensor | None,
    tail: Sequence[torch.Tensor],
    wanted: Sequence[bool],
    grad_out: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor | None]]:
    """Recompute the tail pass by pass; return the gradients of h0 (in a workspace buffer),
    of the structure embedding and of the tail's parameters (None where not ``wanted``)."""
    leaves = [p.detach().requires_grad_(w) for p, w in zip(tail, wanted)]
    trained = [p for p in leaves if p.requires_grad]
    grad_h0 = context.workspace.take("grad_h0", tuple(h0.shape), h0.dtype)
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


class GeneratedGenerator:
    """A generator whose weights are a tensor generated by the level above (recursive
    generation, reference-facts section 11): H_k of family ``uhn``, run functionally.

    It owns no parameters. Its layers are the target's own layer modules (``linear``,
    ``mha``), called with the generated tensors (``functional_call``), so their semantics
    are the layer kinds' one definition. It reuses the root's Fourier encoders (same B, same
    union normalisation) and generates through the same fast path as ``UHNGenerator``: the
    index path's first Linear runs factored, the rest is its ``tail``. Gradients reach the
    generated weights, hence the level above.
    """

    def __init__(self, target: "DeviceTarget", root: UHNGenerator):
        shape = target.plan.spec.generated
        if shape is None or root.structure is None:
            raise ValueError(f"{target.plan.name}: not a generated generator (family uhn) or the root has no structure encoder")
        self.target, self.root = target, root
        self.split = shape.structure_layers
        self.layers = list(target.model.layers)
        self.ctx = ForwardContext()
        self._names = [[] for _ in self.layers]  # local parameter names per layer, in plan order
        for p in target.plan.params:
            self._names[p.layer].append(p.name.split(".", 2)[2])
        input_layer = target.plan.spec.layers[self.split]
        self._hidden = int(input_layer.out_features)
        self._layouts = LayoutCache(self._hidden, root.spec.index_freqs)
        self.max_saved_bytes = DEFAULT_MAX_SAVED_BYTES

    @property
    def hidden(self) -> int:
        return self._hidden

    def layer_params(self, flat: torch.Tensor) -> list[list[torch.Tensor]]:
        """The generated tensors of each layer, in each module's parameter order."""
        views = self.target.params_from_flat(flat)
        return [[views[f"layers.{i}.{name}"] for name in names] for i, names in enumerate(self._names)]

    def _call(self, layer: int, params: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        tensors = dict(zip(self._names[layer], params))
        return functional_call(self.layers[layer], tensors, (x, self.ctx))

    def structure_embedding(self, layers: list[list[torch.Tensor]], structure_rows: torch.Tensor) -> torch.Tensor:
        """(1, d): the structure path over the root's structure Fourier features."""
        x = self.root.structure.fourier(structure_rows).unsqueeze(0)  # type: ignore[union-attr]
        for i in range(self.split):
            x = self._call(i, layers[i], x)
        return x

    def tail(self, h: torch.Tensor, structure: torch.Tensor | None, params: Sequence[torch.Tensor]) -> torch.Tensor:
        """Hidden layers, + structure, head: ``params`` are layers split+1.. flattened."""
        rest = iter(params)
        last = len(self.layers) - 1
        for i in range(self.split + 1, last):
            h = self._call(i, [next(rest) for _ in self._names[i]], h)
        if structure is not None:
            h = h + structure
        return self._call(last, [next(rest) for _ in self._names[last]], h).squeeze(-1)

    def generate(
        self, flat: torch.Tensor, index: IndexDescriptors, structure_rows: torch.Tensor, chunk_rows: int | None = None
    ) -> torch.Tensor:
        """The next level's weights (N,) from this generator's generated weights ``flat``."""
        layers = self.layer_params(flat)
        structure = self.structure_embedding(layers, structure_rows)
        first = layers[self.split]
        bias = first[1] if len(first) > 1 else torch.zeros(self.hidden, device=flat.device)
        tail = [p for i in range(self.split + 1, len(layers)) for p in layers[i]]
        layout = self._layouts.get(index, chunk_rows or self.root.spec.chunk_rows, flat.device)
        basis = self.root.index_fourier.basis()
        return generate_layout(self, layout, basis, structure, [first[0], bias, *tail], self.max_saved_bytes)


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
