"""Dropout layer: property harness; an identity at evaluation, active in training."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.spec.layers.harness import check_layer_properties, make_spec, synthetic_task
from uhn_spec import ExperimentSpec, build_model


@st.composite
def dropout_specs(draw: st.DrawFn) -> ExperimentSpec:
    layers = [
        {"kind": "linear", "in_features": 3, "out_features": 5},
        {"kind": "dropout", "p": draw(st.sampled_from([0.0, 0.1, 0.5]))},
        {"kind": "linear", "in_features": 5, "out_features": 2},
    ]
    return make_spec(layers, synthetic_task("formula_regression", [3], 2), "mlp")


@given(dropout_specs())
@settings(max_examples=10, deadline=None)
def test_dropout_properties(spec: ExperimentSpec) -> None:
    check_layer_properties(spec)


def test_dropout_drops_only_in_training() -> None:
    spec = make_spec(
        [{"kind": "dropout", "p": 0.5}, {"kind": "linear", "in_features": 50, "out_features": 2}],
        synthetic_task("formula_regression", [50], 2),
        "mlp",
    )
    layer = build_model(spec).layers[0]
    x = torch.ones(4, 50)
    assert torch.equal(layer.eval()(x, None), x)
    assert bool((layer.train()(x, None) == 0).any())
