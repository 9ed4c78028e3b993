"""The UHN generator H: descriptors -> one scalar weight per index row.

Layout (reference-facts §3): index path = Gaussian Fourier features of the normalised index
row -> Linear(2m, d) -> N_blk pre-activation residual blocks; optional structure path =
Fourier features of each layer's [global; task; local] row -> one Transformer encoder layer
-> mean over layers -> Linear -> ReLU -> Linear (zero-initialised), added to the index path;
then ReLU -> Linear(d, 1).

Non-trainable state (Fourier matrices B, normalisation mean and scale) lives in buffers, and
B is drawn from an explicit seeded ``torch.Generator``. Generation runs over chunks of index
rows with recomputation in the backward, so memory grows as O(N) rather than O(N * 2m).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from uhn_spec.descriptors import INDEX_FIELDS, STRUCTURE_FIELDS, Ranges
from uhn_spec.spec import GeneratorSpec


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

    def structure_embedding(self, structure_rows: torch.Tensor) -> torch.Tensor | None:
        return None if self.structure is None else self.structure(structure_rows)

    def hidden_from_features(self, features: torch.Tensor) -> torch.Tensor:
        h = self.index_in(features)
        for block in self.blocks:
            h = block(h)
        return h

    def head(self, h: torch.Tensor, structure: torch.Tensor | None) -> torch.Tensor:
        if structure is not None:
            h = h + structure
        return self.out(torch.relu(h)).squeeze(-1)

    def _chunk(self, index_rows: torch.Tensor, structure: torch.Tensor | None) -> torch.Tensor:
        features = self.index_fourier(index_rows)
        return self.head(self.hidden_from_features(features), structure).float()

    def forward(
        self,
        index_rows: torch.Tensor,
        structure_rows: torch.Tensor | None = None,
        chunk_rows: int | None = None,
    ) -> torch.Tensor:
        """Generate one weight per index row: (N, 10) small ints -> (N,) fp32.

        Rows are processed in chunks; when gradients are needed each chunk is recomputed in
        the backward instead of keeping its (chunk, 2m) features alive.
        """
        structure = None
        if self.structure is not None:
            if structure_rows is None:
                raise ValueError("this generator has a structure encoder: pass structure_rows")
            structure = self.structure_embedding(structure_rows)
        chunk = chunk_rows or self.spec.chunk_rows
        n = index_rows.shape[0]
        if n <= chunk:
            return self._run_chunk(index_rows, structure)
        parts = [self._run_chunk(index_rows[i : i + chunk], structure) for i in range(0, n, chunk)]
        return torch.cat(parts)

    def _run_chunk(self, rows: torch.Tensor, structure: torch.Tensor | None) -> torch.Tensor:
        if torch.is_grad_enabled():
            return checkpoint(self._chunk, rows, structure, use_reentrant=False)
        return self._chunk(rows, structure)


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
