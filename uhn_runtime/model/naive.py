"""The naive one-batch generator: the baseline of ``uhn bench`` and the numerical reference.

Same parameters and math as ``UHNGenerator`` (it runs that generator's own modules), but the
direct way, as the authors' code does: Fourier features of all N rows at once (projection,
cos, sin, concatenation), then the MLP over all N rows, with everything kept for the backward.
It needs about 40 KB per generated weight at m = 2048 (``naive_bytes_estimate``); callers
check that estimate before running it.
"""

from __future__ import annotations

from typing import cast

import torch

from .generator import ResidualBlock, UHNGenerator

FP32 = 4


def naive_generate(
    generator: UHNGenerator,
    index_rows: torch.Tensor,
    structure_rows: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(N,) weights of explicit (N, 10) index rows (``TargetPlan.index_rows()``), all in one
    batch. ``dtype=torch.float64`` gives a float64 reference (the generator's parameters are
    cast; it is not modified)."""
    structure = None
    if generator.structure is not None:
        if structure_rows is None:
            raise ValueError("this generator has a structure encoder: pass structure_rows")
        structure = generator.structure_embedding(structure_rows)
    if dtype == torch.float32:
        features = generator.index_fourier(index_rows)
        return generator.head(generator.hidden_from_features(features), structure).float()
    return _reference(generator, index_rows, structure, dtype)


def _reference(
    generator: UHNGenerator, index_rows: torch.Tensor, structure: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    phase = generator.index_fourier.phases(index_rows, dtype)
    features = torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)
    h = torch.nn.functional.linear(features, generator.index_in.weight.to(dtype), generator.index_in.bias.to(dtype))
    for block in cast(list[ResidualBlock], generator.blocks):
        x = h
        for norm, linear in ((block.norm1, block.linear1), (block.norm2, block.linear2)):
            x = torch.nn.functional.layer_norm(
                torch.relu(x), norm.normalized_shape, norm.weight.to(dtype), norm.bias.to(dtype), norm.eps
            )
            x = torch.nn.functional.linear(x, linear.weight.to(dtype), linear.bias.to(dtype))
        h = h + x
    if structure is not None:
        h = h + structure.to(dtype)
    out = generator.out
    return torch.nn.functional.linear(torch.relu(h), out.weight.to(dtype), out.bias.to(dtype)).squeeze(-1)


def naive_bytes_estimate(num_rows: int, freqs: int, hidden: int, blocks: int, with_grad: bool) -> int:
    """Peak bytes the naive generator allocates for N rows (fp32). The Fourier step holds
    phases, cos, sin and their concatenation at once: 5 x N x m. The MLP adds per-row
    activations of width d (about 2 + 7 per block), kept for the backward with gradients,
    which then allocates as much again for their gradients."""
    per_row = 5 * freqs + (2 + 7 * blocks) * hidden * (2 if with_grad else 1)
    return num_rows * per_row * FP32
