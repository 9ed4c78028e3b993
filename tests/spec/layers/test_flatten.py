"""Flatten layer: property harness over images and sequences."""

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.spec.layers.harness import check_layer_properties, make_spec, synthetic_task
from uhn_spec import ExperimentSpec


@st.composite
def flatten_specs(draw: st.DrawFn) -> ExperimentSpec:
    if draw(st.booleans()):
        c, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
        layers = [{"kind": "flatten"}, {"kind": "linear", "in_features": c * h * w, "out_features": 3}]
        return make_spec(layers, synthetic_task("image_classification", [c, h, w], 3), "mlp")
    length = draw(st.integers(2, 5))
    layers = [
        {"kind": "embedding", "num_embeddings": 12, "embedding_dim": 3, "max_length": length},
        {"kind": "flatten"},
        {"kind": "linear", "in_features": 3 * length, "out_features": 2},
    ]
    return make_spec(
        layers, synthetic_task("text_classification", [12], 2, vocab_size=12, max_length=length), "transformer"
    )


@given(flatten_specs())
@settings(max_examples=10, deadline=None)
def test_flatten_properties(spec: ExperimentSpec) -> None:
    check_layer_properties(spec)
