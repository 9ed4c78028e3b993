"""The metric objects: what evaluation, adaptive sampling, the lr sweep and the multi-task
reference check read from them, and the names derived from their registry."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import TypeAdapter, ValidationError

from uhn_spec.metrics import ACCURACY, METRICS, RMSE, Metric, MetricName
from uhn_spec.tasks import DATASETS, TASK_TYPES


def test_the_registry_names_each_metric_by_its_own_name() -> None:
    assert list(METRICS) == ["accuracy", "rmse"]  # records, summaries and tables write these
    assert all(metric.name == name for name, metric in METRICS.items())


def test_metric_names_are_the_registrys() -> None:
    names = TypeAdapter(MetricName)
    assert [names.validate_python(name) for name in METRICS] == list(METRICS)
    with pytest.raises(ValidationError, match="'accuracy' or 'rmse'"):
        names.validate_python("mae")


def test_every_task_type_and_dataset_is_scored_by_a_registered_metric() -> None:
    assert {info.metric for info in TASK_TYPES.values()} <= set(METRICS)
    assert DATASETS["mnist"].metric == "accuracy" and DATASETS["kv"].metric == "rmse"


def test_evaluation_sums_batches_then_finishes() -> None:
    outputs = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    targets = torch.tensor([0, 0, 0])
    assert ACCURACY.sums(outputs, targets) == (2.0, 3)
    assert ACCURACY.finish(2.0 + 1.0, 3 + 1) == 0.75
    assert RMSE.sums(torch.tensor([[1.0], [3.0]]), torch.tensor([0.0, 1.0])) == (5.0, 2)
    assert RMSE.finish(5.0 + 3.0, 2 + 0) == 2.0
    assert math.isnan(ACCURACY.finish(0.0, 0)) and math.isnan(RMSE.finish(0.0, 0))


def test_losses_are_cross_entropy_and_mean_squared_error_in_fp32() -> None:
    logits = torch.tensor([[0.0, 0.0]], dtype=torch.bfloat16)
    assert ACCURACY.loss(logits, torch.tensor([1])).dtype == torch.float32
    assert float(ACCURACY.loss(logits, torch.tensor([1]))) == pytest.approx(math.log(2))
    assert float(RMSE.loss(torch.tensor([[1.0], [3.0]]), torch.tensor([0.0, 1.0]))) == 2.5


def test_a_training_window_averages_batch_figures_without_a_graph() -> None:
    outputs = torch.tensor([[2.0], [0.0]], requires_grad=True)
    figure = RMSE.batch_figure(outputs, torch.tensor([0.0, 0.0]))
    assert figure == 2.0 and RMSE.window_finish(figure) == math.sqrt(2.0)
    logits = torch.tensor([[1.0, 0.0], [1.0, 0.0]], requires_grad=True)
    assert ACCURACY.batch_figure(logits, torch.tensor([0, 1])) == 0.5 == ACCURACY.window_finish(0.5)


def test_better_and_error_ratio_follow_the_direction_of_the_metric() -> None:
    scores = {"0.001": 0.9, "0.003": 0.95, "0.01": 0.95}
    assert ACCURACY.best(scores) == "0.003" and RMSE.best(scores) == "0.001"  # ties: the first
    assert ACCURACY.error_ratio(0.96, 0.98) == pytest.approx(2.0)
    assert RMSE.error_ratio(0.5, 0.05) == pytest.approx(10.0)


@pytest.mark.parametrize(
    "metric, fits, does_not_fit",
    [(ACCURACY, [0.5, 0.99], [0.0, 1.0, -0.1]), (RMSE, [1e-6, 3.0], [0.0, -1.0, math.inf, math.nan])],
)
def test_a_reference_leaves_an_error_to_compare_with(
    metric: Metric, fits: list[float], does_not_fit: list[float]
) -> None:
    assert all(metric.reference_fits(value) for value in fits)
    assert not any(metric.reference_fits(value) for value in does_not_fit)
