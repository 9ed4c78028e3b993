"""A family of architectures sharing one task: each step draws ``train.models_per_step``
seen members (a pure function of seed and step), runs the step's one batch through each
and averages their losses. The end reports every evaluated member and each group's
(seen, unseen) mean and spread; models.csv gets one row per member."""

from __future__ import annotations

import os
from typing import Any

from uhn_spec.errors import UHNError
from uhn_spec.plan import Plan

from ..progress import Progress
from ..run_dir import RunDir
from ..run_tables import MODELS_FILE, models_table_lines, split_groups, write_models_table
from .base import Evaluate, Log, Sampler


class FamilySampler(Sampler):
    @classmethod
    def check(cls, plan: Plan, mode: str) -> None:
        cls.refuse_direct_baseline(mode, f"a family trains one UHN for all {len(plan.targets)} models", "FAMILY")
        first = plan.targets[0]
        for target in plan.targets[1:]:
            for section in ("task", "train"):
                if getattr(target.spec, section) != getattr(first.spec, section):
                    raise UHNError(
                        f"target {target.name}: its {section} section differs from {first.name}'s; the targets of "
                        f"one run share {section} (several tasks in one run are not supported yet)"
                    )

    @classmethod
    def plan_description(cls, plan: Plan) -> str:
        sizes = [t.num_params for t in plan.targets]
        unseen = sum(t.split == "unseen" for t in plan.targets)
        return (
            f"{len(sizes)} models ({len(sizes) - unseen} seen, {unseen} unseen; "
            f"{min(sizes):,} to {max(sizes):,} params)"
        )

    @classmethod
    def plan_label(cls, plan: Plan) -> str:
        """The family's name: its members are named ``<family>_<index>``."""
        names = [t.name for t in plan.targets]
        prefix = os.path.commonprefix(names).rstrip("0123456789").rstrip("_")
        return prefix or f"{names[0]} + {len(names) - 1} others"

    def final(self, evaluate: Evaluate, log_eval: Log) -> tuple[float, dict[str, float] | None]:
        models = self.evaluate_models(evaluate)
        for name, value in models.items():
            log_eval({"model": name, "model_split": self.plan.target(name).split, self.metric_of(name): value})
        return split_groups(self.plan, models)["seen"]["mean"], models

    def interval_evaluation(self, evaluate: Evaluate, record: dict[str, Any]) -> str:
        """Each group's mean, as ``test_<metric>`` (seen) and ``test_unseen_<metric>``."""
        metric = self.data.metric
        groups = split_groups(self.plan, self.evaluate_models(evaluate))
        record["test_" + metric] = groups["seen"]["mean"]
        shown = f"  test {metric} seen {groups['seen']['mean']:.4f}"
        if groups["unseen"]["models"]:
            record["test_unseen_" + metric] = groups["unseen"]["mean"]
            shown += f" unseen {groups['unseen']['mean']:.4f}"
        return shown

    def summary(
        self, models: dict[str, float] | None, phase: dict[str, Any], progress: Progress, run: RunDir
    ) -> dict[str, Any]:
        assert models is not None  # a family trains its UHN only
        if self.dist.is_main:
            write_models_table(run, self.plan, models, self.data.metric)
            for line in models_table_lines(self.plan, models, self.data.metric):
                progress.line(line)
        sizes = [t.num_params for t in self.plan.targets]
        return {
            **split_groups(self.plan, models),
            "models_file": MODELS_FILE,
            "num_models": len(self.plan.targets),
            "target_params_range": [min(sizes), max(sizes)],
            "models_per_step": self.cfg.models_per_step,
        }
