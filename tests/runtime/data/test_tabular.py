"""Tabular tasks (scikit-learn's bundled wine and breast-cancer data), synthetic vector
classification and ``task.resize``."""

from __future__ import annotations

import io

import pytest
import torch

from tests.conftest import REPO_ROOT
from uhn_runtime.data import load_task_data
from uhn_runtime.train.run import TrainOptions, start_run
from uhn_spec import ExperimentSpec, compile_spec
from uhn_spec.modes.single import load_spec


@pytest.mark.parametrize(
    ("dataset", "features", "classes", "examples"), [("wine", 13, 3, 178), ("breast_cancer", 30, 2, 569)]
)
def test_tabular_data_is_standardised_and_split(dataset: str, features: int, classes: int, examples: int) -> None:
    spec = ExperimentSpec.model_validate(
        {
            "name": "t",
            "family": "mlp",
            "task": {"dataset": dataset},
            "layers": [{"kind": "linear", "in_features": features, "out_features": classes}],
        }
    )
    data = load_task_data(spec.task)
    train = torch.cat([b.inputs for b in data.train_batches(1000, 0)])
    test = torch.cat([b.inputs for b in data.eval_batches("test", 1000)])
    assert train.shape[1] == features and len(train) + len(test) == examples
    assert torch.allclose(train.mean(dim=0), torch.zeros(features), atol=1e-4)
    assert float(compile_spec(spec).targets[0].task_row[0]) == 5  # tabular_classification


def test_wine_spec_with_batch_norm_trains_above_chance(tmp_path) -> None:
    spec = load_spec(REPO_ROOT / "specs" / "wine_mlp.yaml", overrides=["train.epochs=10"])
    summary = start_run(
        compile_spec(spec), tmp_path / "run", TrainOptions(mode="uhn", device="cpu", progress=io.StringIO())
    )
    assert summary["uhn"] > 0.6  # 3 classes: chance is about 0.4


def test_synthetic_tabular_classification() -> None:
    task = {
        "dataset": "synthetic",
        "synthetic": {"task_type": "tabular_classification", "input_dims": [7], "num_outputs": 4},
    }
    spec = ExperimentSpec.model_validate(
        {
            "name": "t",
            "family": "mlp",
            "task": task,
            "layers": [{"kind": "linear", "in_features": 7, "out_features": 4}],
        }
    )
    batch = next(load_task_data(spec.task).train_batches(16, 0))
    assert batch.inputs.shape == (16, 7) and batch.targets.dtype == torch.int64 and int(batch.targets.max()) < 4


def test_resize_changes_the_input_the_first_layer_reads() -> None:
    layers = [{"kind": "flatten"}, {"kind": "linear", "in_features": 1 * 16 * 16, "out_features": 10}]
    spec = ExperimentSpec.model_validate(
        {"name": "r", "family": "mlp", "task": {"dataset": "digits", "resize": [16, 16]}, "layers": layers}
    )
    batch = next(load_task_data(spec.task).eval_batches("test", 4))
    assert batch.inputs.shape == (4, 1, 16, 16)
    with pytest.raises(Exception, match="in_features"):
        ExperimentSpec.model_validate({"name": "r", "family": "mlp", "task": {"dataset": "digits"}, "layers": layers})
    with pytest.raises(Exception, match="task.resize: wine is not an image task"):
        ExperimentSpec.model_validate(
            {
                "name": "r",
                "family": "mlp",
                "task": {"dataset": "wine", "resize": [4, 4]},
                "layers": [{"kind": "linear", "in_features": 13, "out_features": 3}],
            }
        )
