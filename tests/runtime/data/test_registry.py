"""The tables a new dataset or task type is added to agree with each other: each dataset of
the spec's table has its loader, and each task type its row (and its generated data when a
synthetic dataset may have it)."""

from __future__ import annotations

import uhn_runtime.data as data
from uhn_runtime.data.synthetic import SYNTHETIC_DATA
from uhn_spec.enums import TaskType
from uhn_spec.tasks import DATASETS, TASK_TYPES


def test_every_dataset_that_reads_data_has_a_loader_and_every_loader_a_dataset() -> None:
    data._import_loaders()
    reads_data = {name for name, info in DATASETS.items() if info.task_type is not TaskType.RECURSIVE}
    assert set(data.LOADERS) == reads_data | {"synthetic"}


def test_every_task_type_has_its_row_and_synthetic_ones_their_generated_data() -> None:
    assert set(TASK_TYPES) == set(TaskType)
    assert set(SYNTHETIC_DATA) == {task for task, info in TASK_TYPES.items() if info.synthetic}
