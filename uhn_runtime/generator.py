"""The UHN generator H: descriptors -> one scalar weight per index row.

Layout (reference-facts §3): index path = Gaussian Fourier features of the normalised index
row -> Linear(2m, d) -> N_blk pre-activation residual blocks; optional structure path =
Fourier features of each layer's [global; task; local] row -> one Transformer encoder layer
-> mean over layers -> Linear -> ReLU -> Linear (zero-initialised), added to the index path;
then ReLU -> Linear(d, 1).

Non-trainable state (Fourier matrices B, normalisation mean and scale) lives in buffers, and
B is drawn from an explicit seeded ``torch.Generator``.

Generation never builds the N x 2m Fourier features: the input Linear runs factored per
parameter tensor (``fast_features``: per-side phasor tables, one GEMM per work unit), and the
rest of the network runs per work unit. With gradients, each unit keeps only its (rows, d)
input-Linear output and recomputes the residual blocks in the backward; past
``max_saved_bytes`` it keeps nothing and recomputes the whole unit. Memory therefore grows as
O(N * d) (or O(N)), not O(N * 2m). ``benchmarks/naive_generator.py`` is the same math run the
direct way, kept as the baseline and the numerical reference.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from uhn_spec.descriptors import INDEX_FIELDS, STRUCTURE_FIELDS, Ranges
from uhn_spec.spec import GeneratorSpec

from .fast_features import FactoredLayout, FactoredLinear, FourierBasis, UnitContext, WorkUnit, build_layout

# Activations kept for the backward, at most: all of them while they fit (about 9 x d floats
# per row), else only each unit's (rows x d) input-Linear output, recomputing the residual
# blocks in the backward, else nothing, recomputing whole units. With this default MNIST-MLP
# keeps everything (0.27 GB), CIFAR CNN-20 and CNN-56 keep the input-Linear output (0.14 and
# 0.44 GB).
DEFAULT_MAX_SAVED_BYTES = 2**30
# Floats per row autograd keeps for the residual blocks and head: per block the ReLU and
# LayerNorm outputs feeding each Linear (4 x d), plus the head's ReLU output.
TAIL_SAVED_PER_BLOCK = 4
# Activations per pass through the residual blocks (rows x d): about 2 MB stays in the L2
# cache and runs the blocks about twice as fast as one pass over a whole work unit, while
# passes stay large enough that per-op overheads do not matter.
TAIL_ELEMENTS = 2**19
# Layouts of the most recent index-row tensors a generator has seen (usually one per target).
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

    def phases(self, rows: torch.Tensor) -> torch.Tensor:
        normalised = (rows.to(torch.float32) - self.mean) * self.inv_std
        return normalised @ self.B

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
        self._layouts: list[tuple[torch.Tensor, int, int, FactoredLayout]] = []

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
        index_rows: torch.Tensor,
        structure_rows: torch.Tensor | None = None,
        chunk_rows: int | None = None,
    ) -> torch.Tensor:
        """Generate one weight per index row: (N, 10) small ints -> (N,) fp32.

        Rows are generated in work units of at most about ``chunk_rows`` rows (default
        ``spec.chunk_rows``); the result does not depend on the unit size. What is kept for
        the backward follows ``max_saved_bytes`` (see ``saving_policy``).
        """
        structure = None
        if self.structure is not None:
            if structure_rows is None:
                raise ValueError("this generator has a structure encoder: pass structure_rows")
            structure = self.structure_embedding(structure_rows)
        layout = self.layout(index_rows, chunk_rows or self.spec.chunk_rows)
        if not layout.units:
            return torch.zeros(0, device=index_rows.device)
        basis = self.index_fourier.basis()
        context = UnitContext(layout, basis, layout.tables(basis))
        run = self._unit_runner(layout.num_rows)
        out = torch.cat([run(context, unit, structure) for unit in layout.units])
        return out if layout.order is None else out[layout.order]

    def layout(self, index_rows: torch.Tensor, chunk_rows: int) -> FactoredLayout:
        """The work units of these index rows, analysed once per tensor and cached (keyed by
        the tensor itself and its version counter, so an in-place change is noticed)."""
        version = index_rows._version
        for rows, seen_version, seen_chunk, layout in self._layouts:
            if rows is index_rows and seen_version == version and seen_chunk == chunk_rows:
                return layout
        layout = build_layout(index_rows, chunk_rows, self.spec.hidden, self.spec.index_freqs)
        self._layouts = [(index_rows, version, chunk_rows, layout), *self._layouts[: LAYOUT_CACHE_SIZE - 1]]
        return layout

    def saving_policy(self, num_rows: int) -> str:
        """What a forward with gradients keeps for N rows: "all" activations, only the
        input-Linear output ("h0") or "nothing" (whole units are recomputed)."""
        row_bytes = 4 * self.spec.hidden
        if num_rows * row_bytes * (TAIL_SAVED_PER_BLOCK * self.spec.blocks + 1) <= self.max_saved_bytes:
            return "all"
        return "h0" if num_rows * row_bytes <= self.max_saved_bytes else "nothing"

    def _unit_runner(self, num_rows: int):
        if not torch.is_grad_enabled():
            return self._run_unit
        policy = self.saving_policy(num_rows)
        if policy == "all":
            return self._run_unit
        if policy == "h0":
            return self._run_unit_keeping_h0
        return lambda context, unit, structure: checkpoint(self._run_unit, context, unit, structure, use_reentrant=False)

    def _run_unit(self, context: UnitContext, unit: WorkUnit, structure: torch.Tensor | None) -> torch.Tensor:
        h0 = FactoredLinear.apply(self.index_in.weight, self.index_in.bias, context, unit)
        return self._tail(h0, structure)

    def _run_unit_keeping_h0(self, context: UnitContext, unit: WorkUnit, structure: torch.Tensor | None) -> torch.Tensor:
        h0 = FactoredLinear.apply(self.index_in.weight, self.index_in.bias, context, unit)
        return checkpoint(self._tail, h0, structure, use_reentrant=False)

    def _tail(self, h0: torch.Tensor, structure: torch.Tensor | None) -> torch.Tensor:
        """Residual blocks and head over one unit's input-Linear output, in cache-sized passes."""
        rows = max(1, TAIL_ELEMENTS // self.spec.hidden)
        parts = [self.head(self.blocks_forward(h), structure).float() for h in h0.split(rows)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)


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
