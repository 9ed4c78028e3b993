"""The init phase's targets: every generated parameter tensor's target mean and population
std, and the statistics a flat weight vector has against them. Model knowledge (what the
plan says each tensor's initialisation is), used by the weight sources (standardisation,
calibration) and by the init phase that trains towards them.

Statistics are segment sums over the flat vector (one ``index_add_`` per moment), never a
Python loop over parameter tensors, and the targets are built once per target.
"""

from __future__ import annotations

import torch

from uhn_spec.plan import TargetPlan

# Keeps sqrt differentiable where a target std is 0 (zero-initialised tensors).
VAR_EPS = 1e-12


class InitTargets:
    """Per-component (= one parameter tensor) target mean and std, and the segment id of
    every scalar of the flat vector. Components with no elements are left out."""

    def __init__(self, target: TargetPlan, device: torch.device):
        params = sorted(target.params, key=lambda p: p.offset)
        offset = 0
        for p in params:
            if p.offset != offset:
                raise AssertionError(f"plan params do not tile the flat vector at {p.name} (offset {p.offset})")
            offset += p.numel
        kept = [p for p in params if p.numel > 0]
        counts = torch.tensor([p.numel for p in kept], dtype=torch.int64)
        self.names = [p.name for p in kept]
        # Empty tensors add no rows to the flat vector, so the segment ids of the kept
        # components in offset order cover it exactly.
        self.segment = torch.repeat_interleave(torch.arange(len(kept)), counts).to(device)
        self.counts = counts.to(device=device, dtype=torch.float32)
        self.mean = torch.tensor([p.init_mean for p in kept], dtype=torch.float32, device=device)
        self.std = torch.tensor([p.init_std for p in kept], dtype=torch.float32, device=device)

    def stats(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, population std) of every component."""
        flat = flat.float()
        zeros = torch.zeros_like(self.counts)
        mean = zeros.index_add(0, self.segment, flat) / self.counts
        centred = flat - mean[self.segment]
        var = zeros.index_add(0, self.segment, centred * centred) / self.counts
        return mean, torch.sqrt(var + VAR_EPS)

    def loss(self, flat: torch.Tensor) -> torch.Tensor:
        """mean((stats - targets)^2) over all components' [mean, std] pairs, as the authors
        compute it: every tensor counts equally whatever its size."""
        mean, std = self.stats(flat)
        return torch.cat([mean - self.mean, std - self.std]).pow(2).mean()
