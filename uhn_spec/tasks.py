"""What each dataset looks like to a spec: task type, descriptor ids, input shape, outputs.

This is the static part of a task (enough to validate and compile a spec); loading the data
itself lives in ``uhn_runtime.data``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .enums import DatasetType, TaskType
from .layers.base import FeatureShape

FORMULA_FUNCTIONS: tuple[str, ...] = (
    "ellipj",
    "ellipkinc",
    "ellipeinc",
    "jv",
    "yv",
    "kv",
    "iv",
    "lpmv0",
    "lpmv1",
    "lpmv2",
    "sph_harm01",
    "sph_harm11",
    "sph_harm02",
    "sph_harm12",
    "sph_harm22",
)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    task_type: TaskType
    dataset_type: DatasetType
    input_kind: Literal["image", "vector", "tokens", "nodes"]
    input_dims: tuple[int, ...]  # tokens: (vocabulary size,) filled from the task spec
    num_outputs: int

    @property
    def metric(self) -> Literal["accuracy", "rmse"]:
        return "rmse" if self.task_type is TaskType.FORMULA_REGRESSION else "accuracy"


def _image(name: str, dtype: DatasetType, dims: tuple[int, int, int]) -> DatasetInfo:
    return DatasetInfo(name, TaskType.IMAGE_CLASSIFICATION, dtype, "image", dims, 10)


def _graph(name: str, dtype: DatasetType, features: int, classes: int) -> DatasetInfo:
    return DatasetInfo(
        name, TaskType.GRAPH_NODE_CLASSIFICATION, dtype, "nodes", (features,), classes
    )


def _text(name: str, dtype: DatasetType, classes: int) -> DatasetInfo:
    return DatasetInfo(name, TaskType.TEXT_CLASSIFICATION, dtype, "tokens", (0,), classes)


def _formula(name: str) -> DatasetInfo:
    outputs = 4 if name == "ellipj" else 1
    return DatasetInfo(
        name, TaskType.FORMULA_REGRESSION, DatasetType[name.upper()], "vector", (2,), outputs
    )


def _tabular(name: str, dtype: DatasetType, features: int, classes: int) -> DatasetInfo:
    return DatasetInfo(name, TaskType.TABULAR_CLASSIFICATION, dtype, "vector", (features,), classes)


def _recursive(leaf_task: TaskType) -> DatasetInfo:
    """What a generated generator (family ``uhn``) "solves": generating a model for a leaf of
    this task type (reference-facts section 11). It reads no data of its own; its input
    is descriptors, checked by the family's own chain rule (``spec.uhn_chain_errors``)."""
    name = f"recursive_{leaf_task.name.lower()}"
    return DatasetInfo(name, TaskType.RECURSIVE, DatasetType[name.upper()], "vector", (0,), 1)


# The dataset of a generated generator, by the task type of the leaf at the chain's end.
RECURSIVE_DATASETS: dict[TaskType, DatasetInfo] = {
    task: _recursive(task)
    for task in (
        TaskType.IMAGE_CLASSIFICATION,
        TaskType.GRAPH_NODE_CLASSIFICATION,
        TaskType.TEXT_CLASSIFICATION,
        TaskType.FORMULA_REGRESSION,
    )
}

DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        _image("mnist", DatasetType.MNIST, (1, 28, 28)),
        _image("cifar10", DatasetType.CIFAR10, (3, 32, 32)),
        _image("digits", DatasetType.DIGITS, (1, 8, 8)),
        _graph("cora", DatasetType.CORA, 1433, 7),
        _graph("citeseer", DatasetType.CITESEER, 3703, 6),
        _graph("pubmed", DatasetType.PUBMED, 500, 3),
        _text("ag_news", DatasetType.AG_NEWS, 4),
        _text("imdb", DatasetType.IMDB, 2),
        *(_formula(name) for name in FORMULA_FUNCTIONS),
        _tabular("wine", DatasetType.WINE, 13, 3),
        _tabular("breast_cancer", DatasetType.BREAST_CANCER, 30, 2),
        *RECURSIVE_DATASETS.values(),
    )
}

DatasetName = Literal[
    "synthetic",
    "mnist",
    "cifar10",
    "digits",
    "wine",
    "breast_cancer",
    "cora",
    "citeseer",
    "pubmed",
    "ag_news",
    "imdb",
    "ellipj",
    "ellipkinc",
    "ellipeinc",
    "jv",
    "yv",
    "kv",
    "iv",
    "lpmv0",
    "lpmv1",
    "lpmv2",
    "sph_harm01",
    "sph_harm11",
    "sph_harm02",
    "sph_harm12",
    "sph_harm22",
    "recursive_image_classification",
    "recursive_graph_node_classification",
    "recursive_text_classification",
    "recursive_formula_regression",
]


TASK_INPUT_KIND: dict[TaskType, str] = {
    TaskType.IMAGE_CLASSIFICATION: "image",
    TaskType.GRAPH_NODE_CLASSIFICATION: "nodes",
    TaskType.TEXT_CLASSIFICATION: "tokens",
    TaskType.FORMULA_REGRESSION: "vector",
    TaskType.TABULAR_CLASSIFICATION: "vector",
}


def synthetic_info(task_type: TaskType, input_dims: tuple[int, ...], num_outputs: int) -> DatasetInfo:
    """A dataset of the shape a spec chooses: generated data for tests and demos."""
    kind = TASK_INPUT_KIND[task_type]
    return DatasetInfo("synthetic", task_type, DatasetType.SYNTHETIC, kind, input_dims, num_outputs)  # type: ignore[arg-type]


def input_shape(info: DatasetInfo, vocab_size: int) -> FeatureShape:
    if info.input_kind == "tokens":
        return FeatureShape("tokens", (vocab_size,), "task.vocab_size")
    return FeatureShape(info.input_kind, info.input_dims, f"the {info.name} input")
