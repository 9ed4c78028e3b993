"""One real training step per paper setting: its spec, its real data, the runtime's
generator, target and loss, with a shrunken generator so each step is quick on a CPU.

Cora also runs the whole `start_run` loop (init phase, two full-batch epochs, final test
evaluation, summary), which is cheap for a graph; the other settings stop after the step,
because their full test evaluation takes minutes on a CPU.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT
from tests.tiny_specs import TINY_GENERATOR
from uhn_runtime.data import load_task_data
from uhn_runtime.model.target import DeviceTarget
from uhn_runtime.model.weights import make_source
from uhn_runtime.train.run import TrainOptions, start_run
from uhn_spec import compile_spec, load_spec
from uhn_spec.metrics import METRICS
from uhn_spec.tasks import FORMULA_FUNCTIONS

pytestmark = pytest.mark.shared_data

SPECS = REPO_ROOT / "specs"
TINY = [f"generator.{field}={value}" for field, value in TINY_GENERATOR.items()]
SETTINGS = [
    ("mnist_mlp", 64),
    ("mnist_cnn8", 16),
    ("cifar10_cnn20", 8),
    ("cora_gcn", 1),
    ("cora_gat", 1),
    ("citeseer_gcn", 1),
    ("citeseer_gat", 1),
    ("imdb_transformer1l", 4),
    ("agnews_transformer2l", 8),
    *((f"kan_{name}", 1000) for name in FORMULA_FUNCTIONS),
]


@pytest.mark.parametrize("spec_name, batch_size", SETTINGS)
def test_one_training_step_on_real_data(data_root: Path, spec_name: str, batch_size: int) -> None:
    spec = load_spec(SPECS / f"{spec_name}.yaml", TINY)
    plan = compile_spec(spec)
    data = load_task_data(spec.task, data_root)
    target = DeviceTarget(plan.targets[0])
    source = make_source("uhn", plan, target, seed=0)
    optimizer = torch.optim.AdamW(source.parameters(), lr=1e-3)
    batch = next(data.train_batches(batch_size, seed=0))

    outputs = target.forward(source.flat(), **batch.model_kwargs())
    picked, targets = batch.select(outputs)
    assert picked.shape[-1] == spec.task.info.num_outputs
    loss = METRICS[data.metric].loss(picked, targets)
    assert math.isfinite(float(loss.detach()))
    loss.backward()
    grads = [p.grad for p in source.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    before = [p.detach().clone() for p in source.parameters()]
    optimizer.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, source.parameters()))


def test_a_short_graph_run_end_to_end(data_root: Path, tmp_path: Path) -> None:
    overrides = [*TINY, "train.epochs=2", "train.warmup=0", "train.init_steps=2"]
    plan = compile_spec(load_spec(SPECS / "cora_gcn.yaml", overrides))
    options = TrainOptions(mode="both", device="cpu", data_root=str(data_root), progress=io.StringIO())
    summary = start_run(plan, tmp_path / "run", options)
    assert summary["metric"] == "accuracy"
    assert 0.0 <= summary["uhn"] <= 1.0 and 0.0 <= summary["direct"] <= 1.0
