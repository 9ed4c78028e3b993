"""The UHN generator H: descriptors -> one scalar weight per index row.

Layout, as in the authors' code: index path = Gaussian Fourier features of the normalised
index row -> Linear(2m, d) -> N_blk pre-activation residual blocks; optional structure path =
Fourier features of each layer's [global; task; local] row -> one Transformer encoder layer
-> mean over layers -> Linear -> ReLU -> Linear (zero-initialised), added to the index path;
then ReLU -> Linear(d, 1).

Non-trainable state (Fourier matrices B, normalisation mean and scale) lives in buffers, and
B is drawn from an explicit seeded ``torch.Generator``.

This module holds the network (``UHNGenerator`` and its layers) and its parameter count.
Generation runs through the fast path (``uhn_runtime.model.fast_path``), which never builds
the N x 2m Fourier features; ``uhn_runtime.model.naive`` is the same math done the direct
way: the baseline and the numerical reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable

from uhn_spec.descriptors import INDEX_FIELDS, STRUCTURE_FIELDS, IndexDescriptors, Ranges, normalise
from uhn_spec.spec import GeneratorSpec

from .fast_features import FactoredLayout, FourierBasis, gemm_dtype
from .fast_path import DEFAULT_MAX_SAVED_BYTES, LayoutCache, generate_layout, saving_policy, tail_rows
from .generation_shard import GenerationShard

LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, as in the authors' residual blocks


def capped_scale(ranges: Ranges, inv_std: torch.Tensor, width_cap: int) -> torch.Tensor:
    """1/std of the normalisation with every range wider than ``width_cap`` integers scaled as
    if it were ``width_cap`` wide (its centre unchanged; its ends then land beyond +-sqrt(3)).

    Why (beyond the paper): with the range normalisation one integer step of a field is
    sqrt(12)/width in normalised units, and with sigma = 100 a phase step of about
    100 * sqrt(12) / width rad. For a 64-wide field that is about 5.4 rad (the features hash
    the index); for a 5,000-token vocabulary 0.07 rad, so the embedding rows of neighbouring
    tokens get near-identical features (cosine 0.997 at F_v 512) and the generator cannot make
    them differ. Capping the width keeps each integer step as far apart as in a narrow field.
    """
    width = ranges.hi - ranges.lo
    capped = width > width_cap
    return torch.where(capped, torch.full_like(inv_std, math.sqrt(12.0) / width_cap), inv_std)


class FourierEncoder(nn.Module):
    """x -> [cos(x_hat B), sin(x_hat B)], x_hat the attribute-wise normalised row.

    Always computed in fp32: under fp16 the phases (|x_hat B| up to ~1800 rad) lose up to
    0.5 rad (a weakness of the authors' code).
    """

    def __init__(
        self, ranges: Ranges, freqs: int, sigma: float, generator: torch.Generator, width_cap: int | None = None
    ):
        super().__init__()
        self.mean: torch.Tensor
        self.inv_std: torch.Tensor
        self.B: torch.Tensor
        in_dim = ranges.lo.shape[0]
        mean, inv_std = ranges.mean_and_scale()
        if width_cap is not None:
            inv_std = capped_scale(ranges, inv_std, width_cap)
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

        self.thread_invariant = False  # set through UHNGenerator.thread_invariant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return residual_block(x, *self.parameters(), thread_invariant=self.thread_invariant)


def residual_block(x: torch.Tensor, *params: torch.Tensor, thread_invariant: bool = False) -> torch.Tensor:
    """``ResidualBlock`` with its parameters as arguments (in ``parameters()`` order: norm1
    weight and bias, linear1 weight and bias, norm2 ..., linear2 ...). ``thread_invariant``:
    gradients that are the same bits on any thread count (``linear``, ``layer_norm`` below),
    which exact data parallel needs; else PyTorch's fused kernels, which are faster."""
    n1w, n1b, l1w, l1b, n2w, n2b, l2w, l2b = params
    lin, norm = (linear, layer_norm) if thread_invariant else (F.linear, fused_layer_norm)
    h = lin(norm(torch.relu(x), n1w, n1b), l1w, l1b)
    h = lin(norm(torch.relu(h), n2w, n2b), l2w, l2b)
    return x + h


def fused_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, weight.shape, weight, bias, eps=LAYER_NORM_EPS)


class _Linear(torch.autograd.Function):
    """``F.linear`` in the GEMM dtype (autocast's, else fp32) whose weight and bias
    gradients, sums over every row, are formed in fp32. A low-precision GEMM with a long
    reduction and a small output (64 x 64 from 8,192 rows) is split along the rows when
    there are several threads (oneDNN bf16, measured), so its sum changed with the thread
    count; fp32 GEMMs follow MKL's strict reproducibility mode (``MKL_CBWR``, set by the CLI:
    ``cpu_policy.set_reproducible_env``), the same on any thread count. Exact data parallel
    needs that (docs/distributed.md). Rows are independent in the forward and in the input's
    gradient: those stay in the GEMM dtype."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        dtype = gemm_dtype(x.device)
        x_low = x.to(dtype)
        ctx.save_for_backward(x_low, weight)
        ctx.x_dtype = x.dtype  # type: ignore[attr-defined]
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x_low, weight.to(dtype), bias.to(dtype))

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x_low, weight = ctx.saved_tensors  # type: ignore[attr-defined]
        needs = ctx.needs_input_grad  # type: ignore[attr-defined]
        # The tail's backward runs under autocast (fast_path.py, GeneratedUnit): without this
        # the fp32 GEMM below would be cast back to bf16.
        with torch.autocast(x_low.device.type, enabled=False):
            grad_x = (grad.to(x_low.dtype) @ weight.to(x_low.dtype)).to(ctx.x_dtype) if needs[0] else None  # type: ignore[attr-defined]
            grad_fp32 = grad.float()
            grad_weight = (grad_fp32.t() @ x_low.float()).to(weight.dtype) if needs[1] else None
            grad_bias = grad_fp32.sum(dim=0) if needs[2] else None
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The residual blocks' Linear: see ``_Linear``."""
    return _Linear.apply(x, weight, bias)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last dimension, its affine part as ops of their own. The fused
    kernel's backward sums the weight and bias gradients over rows in per-thread buffers, so
    they change with the thread count; the gradients of ``addcmul`` are sums over rows split
    by column, the same on any thread count, which exact data parallel needs
    (docs/distributed.md). The affine part runs in the normalised values' dtype (bf16 under
    autocast, as the fused kernel's output was), which is cheaper than fp32."""
    normalised = F.layer_norm(x, weight.shape, eps=LAYER_NORM_EPS)
    return torch.addcmul(bias.to(normalised.dtype), normalised, weight.to(normalised.dtype))


class StructureEncoder(nn.Module):
    """Per-layer structure rows -> one model embedding of width d (zero at init)."""

    def __init__(self, ranges: Ranges, spec: GeneratorSpec, generator: torch.Generator):
        super().__init__()
        self.fourier = FourierEncoder(ranges, spec.structure_freqs, spec.sigma, generator)
        width = self.fourier.out_dim
        self.encoder = nn.TransformerEncoderLayer(
            d_model=width, nhead=spec.structure_heads, dim_feedforward=width, dropout=0.0, batch_first=True
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

    def __init__(self, spec: GeneratorSpec, index_ranges: Ranges, structure_ranges: Ranges, seed: int = 0):
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
        self.index_fourier = FourierEncoder(index_ranges, spec.index_freqs, spec.sigma, rng, spec.index_width_cap)
        self.index_in = nn.Linear(self.index_fourier.out_dim, spec.hidden)
        self.blocks = nn.ModuleList(ResidualBlock(spec.hidden) for _ in range(spec.blocks))
        self.thread_invariant = False
        self.out = nn.Linear(spec.hidden, 1)
        self.max_saved_bytes = DEFAULT_MAX_SAVED_BYTES
        self._layouts = LayoutCache(spec.hidden, spec.index_freqs)
        # Set under torchrun with --shard-generation: this rank generates a share of the work
        # units and gathers the others' (``uhn_runtime.train.distributed``).
        self.shard: GenerationShard | None = None

    @property
    def hidden(self) -> int:
        return self.spec.hidden

    @property
    def thread_invariant(self) -> bool:
        """Whether the residual blocks' gradients are the same bits on any thread count (exact
        data parallel, ``uhn train --exact``); off by default: the fused kernels are faster."""
        return self._thread_invariant

    @thread_invariant.setter
    def thread_invariant(self, value: bool) -> None:
        self._thread_invariant = value
        for block in self.blocks:
            assert isinstance(block, ResidualBlock)
            block.thread_invariant = value

    @property
    def layout_cache_size(self) -> int:
        return self._layouts.capacity

    @layout_cache_size.setter
    def layout_cache_size(self, size: int) -> None:
        self._layouts.capacity = size

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
            h = residual_block(h, *params[b * per_block : (b + 1) * per_block], thread_invariant=self.thread_invariant)
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
        return generate_layout(self, layout, basis, structure, self.tail_parameters(), self.max_saved_bytes, self.shard)

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
