"""``synthetic_batch``: one batch of any task's shape on synthetic data (what `uhn bench`
trains on and the ONNX export traces with)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import REPO_ROOT, skeleton_flat
from tests.tiny_specs import tiny_spec
from uhn_runtime.data.synthetic import synthetic_batch
from uhn_runtime.model.target import DeviceTarget
from uhn_spec import compile_spec, load_spec


@pytest.mark.parametrize(
    "task_type", ["image_classification", "text_classification", "graph_node_classification", "formula_regression"]
)
def test_synthetic_batches_fit_every_task(task_type: str) -> None:
    spec = tiny_spec(task_type)
    target = DeviceTarget(compile_spec(spec).targets[0])
    batch = synthetic_batch(spec.task, 16, torch.device("cpu"))
    outputs = target.forward(skeleton_flat(target), **batch.model_kwargs())
    selected, targets = batch.select(outputs)
    assert selected.shape[0] == targets.shape[0] > 0


def test_cifar_batches_have_the_image_shape() -> None:
    spec = load_spec(REPO_ROOT / "specs" / "cifar10_cnn20.yaml")
    batch = synthetic_batch(spec.task, 256, torch.device("cpu"))
    assert batch.inputs.shape == (256, 3, 32, 32)
