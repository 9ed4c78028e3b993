"""Linear layer: property harness over generated MLP specs."""

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.spec.layers.harness import check_layer_properties, make_spec, synthetic_task
from uhn_spec import ExperimentSpec


@st.composite
def linear_specs(draw: st.DrawFn) -> ExperimentSpec:
    image = draw(st.booleans())
    dims = (
        [draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))]
        if image
        else [draw(st.integers(1, 12))]
    )
    flat = dims[0] * dims[1] * dims[2] if image else dims[0]
    pooling = draw(st.sampled_from(["reshape_to_2d", "avg_pooling", "max_pooling"])) if image else "none"
    width = flat if pooling == "reshape_to_2d" or not image else dims[0]
    layers = []
    for _ in range(draw(st.integers(1, 3))):
        out = draw(st.integers(1, 10))
        shortcut = draw(st.booleans()) and out == width
        layers.append(
            {
                "kind": "linear",
                "in_features": width,
                "out_features": out,
                "bias": draw(st.booleans()),
                "norm": draw(st.booleans()) and width >= 2,  # LN over one feature is constant
                "shortcut": shortcut,
                "dropout": draw(st.sampled_from([0.0, 0.1])),
                "activation": draw(st.sampled_from(["none", "silu", {"type": "leaky_relu", "param": 0.1}, "elu"])),
                "input_pooling": pooling if not layers else "none",
            }
        )
        width = out
    task_type = (
        "image_classification" if image else draw(st.sampled_from(["formula_regression", "graph_node_classification"]))
    )
    return make_spec(layers, synthetic_task(task_type, dims, width), "mlp")


@given(linear_specs())
@settings(max_examples=25, deadline=None)
def test_linear_properties(spec: ExperimentSpec) -> None:
    check_layer_properties(spec)
