"""Which task a multi-task step draws: the fixed probabilities of the paper, or (beyond the
paper, ``sampling: {mode: adaptive}``) probabilities re-weighted during training towards
the members that lag their single-task reference figure.

The lag is read from the training steps themselves: each step records its member's metric
on the batch it trained on (accuracy, or the batch's squared error for RMSE), and every
``every`` steps each member's figure over that window (mean accuracy, or the root of the
mean squared error) gives its *error ratio*: its error over its reference's, RMSE /
reference RMSE or (1 - accuracy) / (1 - reference accuracy), so an accuracy task and an RMSE
task lag on one scale (1: on par; a member ahead of its reference counts as on par). Not a
validation split: digits has none, and a formula task's (``task.validate_split``) would take
a fifth of its training points away and change the task the reference was measured on; the
test split is never read. Training figures flatter a member that overfits, so this signal
under-weights it; it is meant for the gross lag of interference.
A member the window did not draw keeps its last ratio (1 before its first).

The next steps draw with

    p_i' = floor * p_i + (1 - floor) * p_i r_i^strength / sum_j p_j r_j^strength

(``p`` the spec's probabilities, ``r`` the ratios clipped below at 1): each member keeps
``floor`` of its own share, the rest goes to the laggards. The probabilities in effect at a
step are a pure function of the seed, the step and the re-weightings before it, which the
checkpoint holds with the window under way, so a resumed run draws exactly what an
uninterrupted one does.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from uhn_spec.metrics import METRICS
from uhn_spec.modes.multitask import TaskSamplingSpec


def adapted_probabilities(
    base: Sequence[float], ratios: Sequence[float], floor: float, strength: float
) -> tuple[float, ...]:
    """The probabilities after one re-weighting (module docstring); they sum to 1 when
    ``base`` does, and equal ``base`` when no member lags."""
    lag = [p * max(r, 1.0) ** strength for p, r in zip(base, ratios, strict=True)]
    total = math.fsum(lag)
    return tuple(floor * p + (1.0 - floor) * w / total for p, w in zip(base, lag))


@dataclass(frozen=True)
class SamplingUpdate:
    step: int  # in effect from this step on (the steps done when it was computed)
    figures: tuple[float | None, ...]  # each member's training figure over the window (None: not drawn)
    ratios: tuple[float, ...]
    probabilities: tuple[float, ...]


class TaskSampling:
    """The draw probabilities of a multi-task run's task phase, step by step, and the
    training figures adaptive sampling re-weights them by."""

    def __init__(
        self,
        base: Sequence[float],
        settings: TaskSamplingSpec,
        metrics: Sequence[str] = (),
        references: Sequence[float | None] = (),
    ):
        self.base = tuple(base)
        self.settings = settings
        self.metrics = tuple(METRICS[name] for name in metrics)
        self.references = tuple(references)
        self.updates: list[SamplingUpdate] = []
        self._update_steps: list[int] = []
        self.window = [[0.0, 0] for _ in self.base]  # per member: sum of batch figures, steps

    @property
    def adaptive(self) -> bool:
        return self.settings.mode == "adaptive"

    def at(self, step: int) -> tuple[float, ...]:
        """The probabilities step ``step`` draws with: the latest re-weighting at or before it."""
        i = bisect.bisect_right(self.update_steps, step)
        return self.updates[i - 1].probabilities if i else self.base

    @property
    def update_steps(self) -> list[int]:
        """The steps of the re-weightings, kept beside them: ``at`` runs once per step, and a
        long run's summary and resume replay every step."""
        if len(self._update_steps) != len(self.updates):
            self._update_steps = [u.step for u in self.updates]
        return self._update_steps

    def observe(self, member: int, figure: float) -> None:
        """One training step of ``member`` (its position among the members) and its batch figure."""
        self.window[member][0] += figure
        self.window[member][1] += 1

    def due(self, steps_done: int, total_steps: int) -> bool:
        """Whether to re-weight after ``steps_done`` steps (never after the last one)."""
        return self.adaptive and 0 < steps_done < total_steps and steps_done % self.settings.every == 0

    def window_figures(self) -> tuple[float | None, ...]:
        """Each member's figure in its metric over the window's steps (None: the window did not draw it)."""
        return tuple(
            metric.window_finish(total / steps) if steps else None
            for metric, (total, steps) in zip(self.metrics, self.window)
        )

    def reweight(self, step: int) -> SamplingUpdate:
        """Re-weight from the window's figures after ``step`` steps and start a new window."""
        previous = self.updates[-1].ratios if self.updates else (1.0,) * len(self.base)
        figures = self.window_figures()
        ratios = tuple(
            old if figure is None else metric.error_ratio(figure, float(reference))  # type: ignore[arg-type]  # adaptive: all references given
            for figure, old, metric, reference in zip(figures, previous, self.metrics, self.references)
        )
        probabilities = adapted_probabilities(self.base, ratios, self.settings.floor, self.settings.strength)
        update = SamplingUpdate(step, figures, ratios, probabilities)
        self.updates.append(update)
        self.window = [[0.0, 0] for _ in self.base]
        return update

    def state_dict(self) -> dict[str, Any]:
        updates = [
            {
                "step": u.step,
                "figures": list(u.figures),
                "ratios": list(u.ratios),
                "probabilities": list(u.probabilities),
            }
            for u in self.updates
        ]
        return {"updates": updates, "window": [list(w) for w in self.window]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = [
            SamplingUpdate(int(u["step"]), tuple(u["figures"]), tuple(u["ratios"]), tuple(u["probabilities"]))
            for u in state["updates"]
        ]
        self.window = [[float(total), int(steps)] for total, steps in state["window"]]
        self._update_steps = [u.step for u in self.updates]
