"""Block layer (layers under one identity or projection shortcut): property harness, and a
ResNet basic block and a Transformer encoder layer written as specs."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.spec.layers.harness import check_layer_properties, make_spec, synthetic_task
from uhn_spec import ExperimentSpec, build_model, compile_spec


def basic_block(cin: int, cout: int, stride: int) -> dict:
    pooling = "conv_pooling" if stride == 2 else "none"
    main = [
        {"kind": "conv2d", "in_channels": cin, "out_channels": cout, "bias": False, "stage_pooling": pooling},
        {"kind": "norm", "type": "batch", "features": cout},
        {"kind": "activation", "type": "relu"},
        {"kind": "conv2d", "in_channels": cout, "out_channels": cout, "bias": False},
        {"kind": "norm", "type": "batch", "features": cout},
    ]
    shortcut = "identity"
    if stride != 1 or cin != cout:
        shortcut = [
            {
                "kind": "conv2d",
                "in_channels": cin,
                "out_channels": cout,
                "kernel_size": 1,
                "bias": False,
                "stage_pooling": pooling,
            },
            {"kind": "norm", "type": "batch", "features": cout},
        ]
    return {"kind": "block", "layers": main, "shortcut": shortcut}


@st.composite
def block_specs(draw: st.DrawFn) -> ExperimentSpec:
    if draw(st.booleans()):
        cin, cout = draw(st.sampled_from([(2, 2), (2, 3)]))
        stride = draw(st.sampled_from([1, 2]))
        layers = [
            basic_block(cin, cout, stride),
            {"kind": "activation", "type": "relu"},
            {"kind": "pool", "type": "adaptive_avg"},
            {"kind": "flatten"},
            {"kind": "linear", "in_features": cout, "out_features": 2},
        ]
        return make_spec(layers, synthetic_task("image_classification", [cin, 4, 4], 2), "cnn")
    width = draw(st.sampled_from([2, 4]))
    inner = {"kind": "block", "layers": [{"kind": "linear", "in_features": width, "out_features": width}]}
    layers = [
        {
            "kind": "block",
            "layers": [{"kind": "linear", "in_features": width, "out_features": width, "activation": "gelu"}, inner],
        },
        {"kind": "linear", "in_features": width, "out_features": 2},
    ]
    return make_spec(layers, synthetic_task("formula_regression", [width], 2), "mlp")


@given(block_specs())
@settings(max_examples=12, deadline=None)
def test_block_properties(spec: ExperimentSpec) -> None:
    check_layer_properties(spec)


def test_block_descriptors_are_in_preorder_with_one_row_per_layer() -> None:
    layers = [
        basic_block(2, 3, 2),
        {"kind": "pool", "type": "adaptive_avg"},
        {"kind": "flatten"},
        {"kind": "linear", "in_features": 3, "out_features": 2},
    ]
    spec = make_spec(layers, synthetic_task("image_classification", [2, 4, 4], 2), "cnn")
    target = compile_spec(spec).targets[0]
    # block, its 5 layers, its 2 shortcut layers, then pool, flatten, linear
    assert target.local_rows.shape[0] == 11
    assert float(target.global_row[1]) == 11  # num_layers
    names = {p.name: p.layer for p in target.params}
    assert names["layers.0.layers.0.weight"] == 1
    assert names["layers.0.shortcut.0.weight"] == 6
    assert names["layers.3.weight"] == 10
    assert float(target.local_rows[0, 4]) == 2  # shortcut_type: projection


def test_block_adds_its_shortcut() -> None:
    spec = make_spec(
        [{"kind": "block", "layers": [{"kind": "linear", "in_features": 3, "out_features": 3}]}],
        synthetic_task("formula_regression", [3], 3),
        "mlp",
    )
    model = build_model(spec)
    linear = model.layers[0].layers[0]
    x = torch.randn(4, 3)
    assert torch.allclose(model(x), x + linear(x, None))
