"""The metrics a task is scored by, one object each: its name (as records, summaries and tables
write it), its training loss, its evaluation, which value is better, and what a reference
figure in it may be.

A metric is one class here plus its entry in ``METRICS``; ``MetricName`` (the names specs,
tables and data accept) is derived from that registry. It lives in ``uhn_spec`` rather than
``uhn_runtime.data`` because the spec side needs it too (a multi-task reference is checked
against its member's metric, a task type names its metric) and ``uhn_spec`` may not import
the runtime; the tensor math needs only torch, which ``uhn_spec`` already imports for its
layers. Keeping the math beside the facts makes a new metric one place, not two.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar, Literal, TypeVar

import torch
import torch.nn.functional as F

Key = TypeVar("Key")


class Metric(ABC):
    """How a task's outputs are scored. Evaluation sums ``sums`` over batches and ends with
    ``finish``; a training step's ``batch_figure`` is averaged over a window and ends with
    ``window_finish`` (adaptive multi-task sampling)."""

    name: ClassVar[str]
    higher_is_better: ClassVar[bool]
    reference_range: ClassVar[str]  # what a reference figure must be, for the error message

    @abstractmethod
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training loss of a batch's (selected) outputs, in fp32."""

    @abstractmethod
    def sums(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
        """(sum, count) of one evaluation batch, to accumulate over the split."""

    @abstractmethod
    def from_mean(self, mean: float) -> float:
        """The split's figure from the mean of its accumulated ``sums``."""

    @abstractmethod
    def batch_figure(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        """What a training step adds to its member's sampling window."""

    @abstractmethod
    def window_finish(self, mean: float) -> float:
        """A window's figure from the mean of its steps' ``batch_figure``."""

    @abstractmethod
    def error(self, value: float) -> float:
        """How far ``value`` is from perfect (0: perfect), the scale error ratios compare on."""

    @abstractmethod
    def reference_fits(self, value: float) -> bool:
        """Whether ``value`` can be a reference figure (one that leaves an error to compare with)."""

    def finish(self, total: float, count: int) -> float:
        """The split's figure from its accumulated (sum, count); NaN for an empty split."""
        if count == 0:
            return float("nan")
        return self.from_mean(total / count)

    def error_ratio(self, value: float, reference: float) -> float:
        """How many times ``value``'s error is ``reference``'s (>1: it lags the reference)."""
        return self.error(value) / self.error(reference)

    def best(self, scores: Mapping[Key, float]) -> Key:
        """The key of the best score (the first of equal ones)."""
        pick = max if self.higher_is_better else min
        return pick(scores, key=lambda key: scores[key])


class Accuracy(Metric):
    """Classification: cross-entropy loss, the fraction of correct argmax predictions."""

    name = "accuracy"
    higher_is_better = True
    reference_range = "an accuracy in (0, 1)"

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.float(), targets)

    def sums(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
        return float((outputs.argmax(dim=-1) == targets).sum()), targets.numel()

    def from_mean(self, mean: float) -> float:
        return mean

    @torch.no_grad()
    def batch_figure(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        return float((outputs.argmax(dim=-1) == targets).float().mean())

    def window_finish(self, mean: float) -> float:
        return mean

    def error(self, value: float) -> float:
        return 1.0 - value

    def reference_fits(self, value: float) -> bool:
        return 0.0 < value < 1.0  # 1 would leave no error to compare with


class Rmse(Metric):
    """Regression: mean squared error loss, the root of the mean squared error."""

    name = "rmse"
    higher_is_better = False
    reference_range = "a positive RMSE"

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(outputs.float(), targets.float().view_as(outputs))

    def sums(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
        err = (outputs.float() - targets.float().view_as(outputs)).pow(2)
        return float(err.sum()), err.numel()

    def from_mean(self, mean: float) -> float:
        return mean**0.5

    @torch.no_grad()
    def batch_figure(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        """The batch's mean squared error (a window's RMSE is the root of their mean)."""
        return float(torch.mean((outputs.float() - targets.float().view_as(outputs)) ** 2))

    def window_finish(self, mean: float) -> float:
        return math.sqrt(mean)

    def error(self, value: float) -> float:
        return value

    def reference_fits(self, value: float) -> bool:
        return value > 0.0 and math.isfinite(value)


ACCURACY, RMSE = Accuracy(), Rmse()
METRICS: dict[str, Metric] = {metric.name: metric for metric in (ACCURACY, RMSE)}

# The names a table row or a dataset's metric may be: the registry's.
if TYPE_CHECKING:
    MetricName = str
else:
    MetricName = Literal[tuple(METRICS)]

__all__ = ["ACCURACY", "METRICS", "RMSE", "Accuracy", "Metric", "MetricName", "Rmse"]
