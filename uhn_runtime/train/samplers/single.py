"""One target (a recursive plan's leaf included): every step trains it on the next batch,
and the run reports one test value. Its direct baseline trains the same model's weights."""

from __future__ import annotations

from typing import Any

from uhn_spec.plan import Plan

from ..progress import Progress
from ..run_dir import RunDir
from .base import Evaluate, Log, Sampler


class SingleSampler(Sampler):
    named = False  # one target: records and messages need not name it

    @classmethod
    def plan_description(cls, plan: Plan) -> str:
        return f"{plan.trained_target.num_params:,} target params"

    @classmethod
    def plan_label(cls, plan: Plan) -> str:
        return plan.trained_target.name

    def final(self, evaluate: Evaluate, log_eval: Log) -> tuple[float, dict[str, float] | None]:
        value = evaluate(self.targets[self.seen[0]])
        log_eval({self.data.metric: value})
        return value, None

    def interval_evaluation(self, evaluate: Evaluate, record: dict[str, Any]) -> str:
        value = evaluate(self.targets[self.seen[0]])
        record["test_" + self.data.metric] = value
        return f"  test {self.data.metric} {value:.4f}"

    def summary(
        self, models: dict[str, float] | None, phase: dict[str, Any], progress: Progress, run: RunDir
    ) -> dict[str, Any]:
        return {"target_params": self.plan.targets[self.seen[0]].num_params}
