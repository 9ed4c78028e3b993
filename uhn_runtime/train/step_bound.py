"""An optimiser step bounded in the generated weights (``train.level_change_bound``; beyond
the paper).

Adam moves every one of H0's parameters by about the lr whatever the gradient's size, and
with thousands of Fourier features those moves add up coherently in the weights H0
generates; through a chain of generated generators each level multiplies the effect, so one
step at a tiny lr can throw a calibrated level far from its statistics (docs/results.md,
*Recursive generation*). The bound keeps Adam's direction but shortens the step until no
generated level's weights change by more than ``bound`` of their norm:
``|w_k(new) - w_k(old)| <= bound * |w_k(old)|`` for every level k (H1, ..., H_K, the leaf;
the leaf alone for an ordinary UHN). The check is exact, not a linearisation: the step is
taken, the levels regenerated and measured, and the step shortened and measured again until
it holds (or dropped). The levels measured after one step are the next step's reference, so
a step within the bound costs one extra forward pass without gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..model.weights import RecursiveSource, UHNSource
from .precision import Precision

# Tries to shorten a step before it is dropped; each one regenerates the levels.
MAX_SHORTENINGS = 10
# Aim a little inside the bound when shortening, as the change is not exactly linear.
SHORTEN_MARGIN = 0.9
# The most one try shortens the step by: far outside the bound the change is not linear in
# the step (a level can overflow), and a linear estimate made there shortens it to nothing.
MIN_SHORTENING = 0.01


def relative_changes(before: list[torch.Tensor], after: list[torch.Tensor]) -> list[float]:
    """|after - before| / |before| of each level (flat weight vectors, in fp32); inf where a
    level overflowed (so that ``max`` sees it: a NaN compares as neither larger nor smaller)."""
    changes = [float((a - b).norm() / b.norm().clamp_min(1e-30)) for b, a in zip(before, after)]
    return [c if math.isfinite(c) else math.inf for c in changes]


class LevelChangeBound:
    """Wraps one optimiser step of ``source`` (``step``) so that the relative change of each of
    its first ``levels`` generated weight vectors stays within ``bound``."""

    def __init__(
        self, source: UHNSource | RecursiveSource, bound: float, precision: Precision, levels: int | None = None
    ):
        if not bound > 0:
            raise ValueError(f"the bound must be positive, not {bound}")
        self.source, self.bound, self.precision, self.levels = source, bound, precision, levels
        self.params = [p for p in source.parameters() if p.requires_grad]
        self._reference: list[torch.Tensor] | None = None
        self.last_scale = 1.0  # the fraction of the optimiser's step that was kept
        self.last_change = 0.0  # the largest relative change of a level in the last step

    @torch.no_grad()
    def measure(self) -> list[torch.Tensor]:
        """The generated levels at the current parameters."""
        with self.precision.autocast():
            if isinstance(self.source, RecursiveSource):
                flats = self.source.level_flats(self.levels)
            else:
                flats = [self.source.flat()]
        return [f.detach().float().clone() for f in flats]

    @torch.no_grad()
    def step(self, optimizer_step: Callable[[], object]) -> None:
        """Take ``optimizer_step`` (which updates the parameters in place), then shorten it
        along its own direction until every level's relative change is within the bound."""
        if self._reference is None:
            self._reference = self.measure()
        start = [p.detach().clone() for p in self.params]
        optimizer_step()
        moves = [p.detach() - s for p, s in zip(self.params, start)]
        scale = 1.0
        for _ in range(MAX_SHORTENINGS + 1):
            levels = self.measure()
            change = max(relative_changes(self._reference, levels))
            if change <= self.bound:
                break
            scale *= max(MIN_SHORTENING, SHORTEN_MARGIN * self.bound / change)
            for p, s, m in zip(self.params, start, moves):
                p.copy_(s + scale * m)
        else:  # still too far after every shortening: no step at all
            scale = 0.0
            for p, s in zip(self.params, start):
                p.copy_(s)
            levels, change = self._reference, 0.0
        self._reference = levels
        self.last_scale, self.last_change = scale, change
