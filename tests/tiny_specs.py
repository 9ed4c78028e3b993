"""Tiny specs on synthetic data, one per task type, for fast runtime tests.

The generator is shrunk (16 Fourier frequencies, width 16) so a training step takes
milliseconds; the runtime code paths are the same as with the paper's sizes.
"""

from __future__ import annotations

from typing import Any

import yaml

from uhn_spec import ExperimentSpec, Plan, compile_spec

TINY_GENERATOR = {"index_freqs": 16, "hidden": 16, "blocks": 1}

LAYERS: dict[str, list[dict[str, Any]]] = {
    "image_classification": [
        {"kind": "linear", "in_features": 16, "out_features": 12, "input_pooling": "reshape_to_2d"},
        {"kind": "linear", "in_features": 12, "out_features": 3, "activation": "silu", "norm": True},
    ],
    "formula_regression": [
        {"kind": "linear", "in_features": 2, "out_features": 12},
        {"kind": "linear", "in_features": 12, "out_features": 1, "activation": "silu"},
    ],
    "graph_node_classification": [
        {"kind": "gcn", "in_features": 8, "out_features": 12},
        {"kind": "gcn", "in_features": 12, "out_features": 3, "activation": "leaky_relu"},
    ],
    "text_classification": [
        {"kind": "embedding", "num_embeddings": 24, "embedding_dim": 8, "max_length": 6},
        {"kind": "mha", "dim": 8, "heads": 2, "shortcut": True},
        {"kind": "linear", "in_features": 8, "out_features": 2, "input_pooling": "avg_sequence"},
    ],
}

SHAPES: dict[str, dict[str, Any]] = {
    "image_classification": {"input_dims": [1, 4, 4], "num_outputs": 3},
    "formula_regression": {"input_dims": [2], "num_outputs": 1},
    "graph_node_classification": {"input_dims": [8], "num_outputs": 3},
    "text_classification": {"input_dims": [6], "num_outputs": 2},
}

FAMILIES = {
    "image_classification": "mlp",
    "formula_regression": "mlp",
    "graph_node_classification": "gcn",
    "text_classification": "transformer",
}


def tiny_spec_data(task_type: str = "image_classification", **train: Any) -> dict[str, Any]:
    task: dict[str, Any] = {
        "dataset": "synthetic",
        "synthetic": {"task_type": task_type, **SHAPES[task_type], "num_examples": 256},
    }
    if task_type == "text_classification":
        task["vocab_size"] = 24
    train_section = {
        "epochs": 3,
        "warmup": 1,
        "lr": 3e-3,
        "init_steps": 5,
        "init_lr": 1e-3,
        "batch_size": 64,
        "seed": 3,
    }
    train_section.update(train)
    if "steps" in train:
        train_section.pop("epochs")
    return {
        "name": f"tiny_{FAMILIES[task_type]}",
        "family": FAMILIES[task_type],
        "task": task,
        "layers": LAYERS[task_type],
        "generator": dict(TINY_GENERATOR),
        "train": train_section,
    }


def tiny_spec(task_type: str = "image_classification", **train: Any) -> ExperimentSpec:
    return ExperimentSpec.model_validate(tiny_spec_data(task_type, **train))


def tiny_plan(task_type: str = "image_classification", **train: Any) -> Plan:
    return compile_spec(tiny_spec(task_type, **train))


def tiny_spec_yaml(task_type: str = "image_classification", **train: Any) -> str:
    return yaml.safe_dump(tiny_spec_data(task_type, **train), sort_keys=False)
