"""The task-type and dataset tables and a spec's ``task`` section: what each dataset looks
like to a spec (task type, descriptor ids, input shape, outputs) and what each task type
means (input kind, metric).

This is the static part of a task (enough to validate and compile a spec); loading the data
itself lives in ``uhn_runtime.data``. ``DATASETS`` is the one list of dataset names and
``TASK_TYPES`` the one list of task types: the names a spec accepts, a dataset's input kind
and metric, and the task types a synthetic dataset may have are derived from them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from .enums import DatasetType, TaskType
from .fields import StrictModel
from .layers.base import FeatureShape
from .metrics import ACCURACY, RMSE, MetricName

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


InputKind = Literal["image", "vector", "tokens", "nodes"]


@dataclass(frozen=True)
class TaskTypeInfo:
    """What a task type means to a spec and a run: the input its targets read and the metric
    (a name of ``uhn_spec.metrics.METRICS``) its runs are trained and scored by."""

    task_type: TaskType
    input_kind: InputKind
    metric: MetricName
    synthetic: bool = True  # a ``synthetic`` dataset of this type can be generated


# The one table of task types: a dataset's input kind and metric, and the task types a
# synthetic dataset may have, follow from it.
TASK_TYPES: dict[TaskType, TaskTypeInfo] = {
    info.task_type: info
    for info in (
        TaskTypeInfo(TaskType.IMAGE_CLASSIFICATION, "image", ACCURACY.name),
        TaskTypeInfo(TaskType.GRAPH_NODE_CLASSIFICATION, "nodes", ACCURACY.name),
        TaskTypeInfo(TaskType.TEXT_CLASSIFICATION, "tokens", ACCURACY.name),
        TaskTypeInfo(TaskType.FORMULA_REGRESSION, "vector", RMSE.name),
        # A generated generator's "task" (family ``uhn``): it reads descriptors, no data.
        TaskTypeInfo(TaskType.RECURSIVE, "vector", ACCURACY.name, synthetic=False),
        TaskTypeInfo(TaskType.TABULAR_CLASSIFICATION, "vector", ACCURACY.name),
    )
}


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    task_type: TaskType
    dataset_type: DatasetType
    input_dims: tuple[int, ...]  # tokens: (vocabulary size,) filled from the task spec
    num_outputs: int

    @property
    def input_kind(self) -> InputKind:
        return TASK_TYPES[self.task_type].input_kind

    @property
    def metric(self) -> MetricName:
        return TASK_TYPES[self.task_type].metric


def _image(name: str, dtype: DatasetType, dims: tuple[int, int, int]) -> DatasetInfo:
    return DatasetInfo(name, TaskType.IMAGE_CLASSIFICATION, dtype, dims, 10)


def _graph(name: str, dtype: DatasetType, features: int, classes: int) -> DatasetInfo:
    return DatasetInfo(name, TaskType.GRAPH_NODE_CLASSIFICATION, dtype, (features,), classes)


def _text(name: str, dtype: DatasetType, classes: int) -> DatasetInfo:
    return DatasetInfo(name, TaskType.TEXT_CLASSIFICATION, dtype, (0,), classes)


def _formula(name: str) -> DatasetInfo:
    outputs = 4 if name == "ellipj" else 1
    return DatasetInfo(name, TaskType.FORMULA_REGRESSION, DatasetType[name.upper()], (2,), outputs)


def _tabular(name: str, dtype: DatasetType, features: int, classes: int) -> DatasetInfo:
    return DatasetInfo(name, TaskType.TABULAR_CLASSIFICATION, dtype, (features,), classes)


def _recursive(leaf_task: TaskType) -> DatasetInfo:
    """What a generated generator (family ``uhn``) "solves": generating a model for a leaf of
    this task type (recursive generation). It reads no data of its own; its input
    is descriptors, checked by the family's own chain rule (``spec.uhn_chain_errors``)."""
    name = f"recursive_{leaf_task.name.lower()}"
    return DatasetInfo(name, TaskType.RECURSIVE, DatasetType[name.upper()], (0,), 1)


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

# The names a spec's ``task.dataset`` accepts: the table's, plus ``synthetic`` (shaped by the
# spec itself). Adding a dataset to DATASETS is all a spec needs.
if TYPE_CHECKING:
    DatasetName = str
else:
    DatasetName = Literal[("synthetic", *DATASETS)]


def synthetic_info(task_type: TaskType, input_dims: tuple[int, ...], num_outputs: int) -> DatasetInfo:
    """A dataset of the shape a spec chooses: generated data for tests and demos."""
    return DatasetInfo("synthetic", task_type, DatasetType.SYNTHETIC, input_dims, num_outputs)


def input_shape(info: DatasetInfo, vocab_size: int) -> FeatureShape:
    if info.input_kind == "tokens":
        return FeatureShape("tokens", (vocab_size,), "task.vocab_size")
    return FeatureShape(info.input_kind, info.input_dims, f"the {info.name} input")


# The task types a ``synthetic`` dataset may have, by their YAML names.
if TYPE_CHECKING:
    SyntheticTaskType = str
else:
    SyntheticTaskType = Literal[tuple(t.yaml_name for t, info in TASK_TYPES.items() if info.synthetic)]


class SyntheticShape(StrictModel):
    """Shape of a ``synthetic`` dataset: generated inputs and a random teacher's labels."""

    task_type: SyntheticTaskType
    input_dims: list[int] = Field(min_length=1, max_length=3, description="image: [C, H, W]; other: [F]")
    num_outputs: int = Field(ge=1)
    num_examples: int = Field(512, ge=8)

    @model_validator(mode="after")
    def _dims_fit(self) -> SyntheticShape:
        if any(d < 1 for d in self.input_dims):
            raise ValueError(f"task.synthetic.input_dims: {self.input_dims} must be positive")
        want = 3 if self.task_type == "image_classification" else 1
        if len(self.input_dims) != want:
            raise ValueError(f"task.synthetic.input_dims: {self.task_type} needs {want} dims, got {self.input_dims}")
        return self


class TaskSpec(StrictModel):
    """Which dataset the target model solves; task type and outputs follow from it."""

    dataset: DatasetName
    vocab_size: int = Field(5000, ge=4, description="text tasks: vocabulary incl. <unk>, <pad>, <cls>")
    synthetic: SyntheticShape | None = Field(None, description="shape of the synthetic dataset")
    max_length: int | None = Field(
        None,
        ge=2,
        description="text tasks: tokens per example incl. <cls> (default: the embedding's max_length, else 512)",
    )
    validate_split: bool = Field(
        False,
        description="hold out a validation split of the training data and train on the rest "
        "(the authors' --validate); off: train on all of it, as the paper's results do",
    )
    resize: list[int] | None = Field(
        None,
        min_length=2,
        max_length=2,
        description="image tasks: resize every image to [H, W] (bilinear, antialiased) before the model",
    )
    stands_in_for: DatasetName | None = Field(
        None,
        description="the dataset this run reports for because it is missing here (citeseer for "
        "pubmed); the run states it in its notes",
    )

    @model_validator(mode="after")
    def _synthetic_shape(self) -> TaskSpec:
        if (self.dataset == "synthetic") != (self.synthetic is not None):
            raise ValueError(
                "task.synthetic: give it exactly when task.dataset is synthetic "
                "(it sets the generated data's task_type, input_dims and num_outputs)"
            )
        if self.resize is not None:
            if any(size < 1 for size in self.resize):
                raise ValueError(f"task.resize: {self.resize} must be two positive sizes [H, W]")
            if self.info.input_kind != "image":
                raise ValueError(f"task.resize: {self.dataset} is not an image task; remove the field")
        if self.stands_in_for == self.dataset:
            raise ValueError(f"task.stands_in_for: {self.dataset} cannot stand in for itself; remove the field")
        return self

    @property
    def info(self) -> DatasetInfo:
        if self.synthetic is not None:
            s = self.synthetic
            info = synthetic_info(TaskType[s.task_type.upper()], tuple(s.input_dims), s.num_outputs)
        else:
            info = DATASETS[self.dataset]
        if self.resize is not None and info.input_kind == "image":
            info = dataclasses.replace(info, input_dims=(info.input_dims[0], *self.resize))
        return info
