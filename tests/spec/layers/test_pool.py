"""Pool layer: property harness, and each pooling type equals PyTorch's module."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.spec.layers.harness import check_layer_properties, make_spec, synthetic_task
from uhn_spec import ExperimentSpec
from uhn_spec.layers.base import FeatureShape
from uhn_spec.layers.pool import PoolSpec


@st.composite
def pool_specs(draw: st.DrawFn) -> ExperimentSpec:
    kind = draw(st.sampled_from(["max", "avg", "adaptive_avg", "adaptive_max"]))
    kernel = draw(st.integers(1, 3))
    pool = {"kind": "pool", "type": kind, "kernel_size": kernel, "padding": draw(st.integers(0, kernel // 2))}
    if draw(st.booleans()):
        pool["stride"] = draw(st.integers(1, 2))
    if kind.startswith("adaptive"):
        pool["output_size"] = draw(st.integers(1, 2))
    pooled = PoolSpec.model_validate(pool).output_shape(FeatureShape("image", (3, 5, 5)), "pool")
    layers = [
        {"kind": "conv2d", "in_channels": 2, "out_channels": 3},
        pool,
        {"kind": "flatten"},
        {"kind": "linear", "in_features": math.prod(pooled.dims), "out_features": 2},
    ]
    return make_spec(layers, synthetic_task("image_classification", [2, 5, 5], 2), "cnn")


@given(pool_specs())
@settings(max_examples=15, deadline=None)
def test_pool_properties(spec: ExperimentSpec) -> None:
    check_layer_properties(spec)


def test_sequence_pooling_properties() -> None:
    for kind in ("avg_sequence", "first_token"):
        layers = [
            {"kind": "embedding", "num_embeddings": 20, "embedding_dim": 4, "max_length": 6},
            {"kind": "pool", "type": kind},
            {"kind": "linear", "in_features": 4, "out_features": 2},
        ]
        check_layer_properties(
            make_spec(layers, synthetic_task("text_classification", [20], 2, vocab_size=20), "transformer")
        )


@pytest.mark.parametrize(
    ("layer", "module"),
    [
        ({"type": "max", "kernel_size": 3, "stride": 2, "padding": 1}, torch.nn.MaxPool2d(3, 2, 1)),
        ({"type": "avg", "kernel_size": 2}, torch.nn.AvgPool2d(2)),
        ({"type": "adaptive_avg", "output_size": 1}, torch.nn.AdaptiveAvgPool2d((1, 1))),
        ({"type": "adaptive_max", "output_size": 2}, torch.nn.AdaptiveMaxPool2d(2)),
    ],
)
def test_pool_equals_torch(layer: dict, module: torch.nn.Module) -> None:
    x = torch.randn(2, 3, 7, 7)
    pooled = PoolSpec.model_validate({"kind": "pool", **layer}).build_module()(x, None)
    assert torch.equal(pooled, module(x))
