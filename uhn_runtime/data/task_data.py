"""The records every loader shares (``Batch``, ``TaskData``, ``DataError``) and the registry
loaders add themselves to: a module of their own, so loaders and ``resize`` import them
without importing the package that loads them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, TypeVar

import torch

from uhn_spec.errors import UHNError
from uhn_spec.metrics import MetricName
from uhn_spec.spec import TaskSpec

Split = Literal["val", "test"]


class DataError(UHNError):
    """A dataset file is missing or malformed; the message names the expected path."""


@dataclass
class Batch:
    inputs: torch.Tensor
    targets: torch.Tensor
    edge_index: torch.Tensor | None = None
    padding_mask: torch.Tensor | None = None  # text: True at padding
    node_mask: torch.Tensor | None = None  # graph: nodes whose loss/metric counts

    def to(self, device: torch.device | str) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return replace(
            self,
            inputs=self.inputs.to(device, non_blocking=True),
            targets=self.targets.to(device, non_blocking=True),
            edge_index=move(self.edge_index),
            padding_mask=move(self.padding_mask),
            node_mask=move(self.node_mask),
        )

    def model_kwargs(self) -> dict[str, torch.Tensor]:
        kwargs = {"x": self.inputs}
        if self.edge_index is not None:
            kwargs["edge_index"] = self.edge_index
        if self.padding_mask is not None:
            kwargs["padding_mask"] = self.padding_mask
        return kwargs

    def select(self, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(outputs, targets) restricted to the examples that count."""
        if self.node_mask is None:
            return outputs, self.targets
        return outputs[self.node_mask], self.targets[self.node_mask]


@dataclass
class TaskData(ABC):
    """A dataset ready for training: fixed splits, preprocessing done or done per batch."""

    metric: MetricName  # the name records use; the object is uhn_spec.metrics.METRICS[metric]
    notes: list[str] = field(default_factory=list)  # e.g. "CiteSeer stands in for PubMed"

    @abstractmethod
    def train_batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        """One epoch of shuffled (and, where the task says so, augmented) training batches."""

    @abstractmethod
    def eval_batches(self, split: Split, batch_size: int) -> Iterator[Batch]:
        """The val or test split in a fixed order, without augmentation."""

    @abstractmethod
    def num_train_batches(self, batch_size: int) -> int: ...


Loader = Callable[[TaskSpec, Path], TaskData]
LOADERS: dict[str, Loader] = {}


LoaderT = TypeVar("LoaderT", bound=Loader)  # a registered loader keeps its own signature


def register_loader(*names: str) -> Callable[[LoaderT], LoaderT]:
    def wrap(fn: LoaderT) -> LoaderT:
        for name in names:
            LOADERS[name] = fn
        return fn

    return wrap
