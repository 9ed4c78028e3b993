"""Activation layer: property harness, and every activation equals PyTorch's module."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.spec.layers.harness import check_layer_properties, make_spec, synthetic_task
from uhn_spec import ExperimentSpec, build_model
from uhn_spec.layers.base import Activation

TYPES = ["relu", "gelu", "tanh", "sigmoid", "silu", "leaky_relu", "elu"]


@st.composite
def activation_specs(draw: st.DrawFn) -> ExperimentSpec:
    layers = [
        {"kind": "linear", "in_features": 4, "out_features": 6},
        {"kind": "activation", "type": draw(st.sampled_from(TYPES))},
        {"kind": "linear", "in_features": 6, "out_features": 3, "activation": draw(st.sampled_from(TYPES + ["none"]))},
    ]
    return make_spec(layers, synthetic_task("formula_regression", [4], 3), "mlp")


@given(activation_specs())
@settings(max_examples=15, deadline=None)
def test_activation_properties(spec: ExperimentSpec) -> None:
    check_layer_properties(spec)


TORCH_MODULES = {
    "relu": torch.nn.ReLU(),
    "gelu": torch.nn.GELU(),
    "tanh": torch.nn.Tanh(),
    "sigmoid": torch.nn.Sigmoid(),
    "silu": torch.nn.SiLU(),
    "leaky_relu": torch.nn.LeakyReLU(),
    "elu": torch.nn.ELU(),
}


@pytest.mark.parametrize("name", TYPES)
def test_activation_layer_equals_torch_module_with_default_param(name: str) -> None:
    spec = make_spec(
        [{"kind": "activation", "type": name}, {"kind": "linear", "in_features": 4, "out_features": 2}],
        synthetic_task("formula_regression", [4], 2),
        "mlp",
    )
    x = torch.randn(7, 4) * 3
    assert torch.allclose(build_model(spec).layers[0](x, None), TORCH_MODULES[name](x))


def test_type_without_param_takes_pytorch_default_not_zero() -> None:
    # `{type: elu}` used to mean alpha 0 (a ReLU) while `elu` meant alpha 1.
    assert Activation.model_validate({"type": "elu"}) == Activation.model_validate("elu")
    assert Activation.model_validate({"type": "elu"}).param == 1.0
    assert Activation.model_validate({"type": "leaky_relu"}).param == 0.01
    assert Activation.model_validate({"type": "leaky_relu", "param": 0}).param == 0.0
