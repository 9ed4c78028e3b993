"""Norm layer (LayerNorm / GroupNorm / BatchNorm with generated affine): property harness."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.spec.layers.harness import check_layer_properties, make_spec, synthetic_task
from uhn_spec import ExperimentSpec, build_model, compile_spec


@st.composite
def norm_specs(draw: st.DrawFn) -> ExperimentSpec:
    norm = draw(st.sampled_from(["layer", "group", "batch"]))
    image = norm == "group" or (norm == "batch" and draw(st.booleans()))
    channels = draw(st.sampled_from([2, 4, 6]))
    affine = draw(st.booleans())
    layer = {"kind": "norm", "type": norm, "features": channels, "affine": affine}
    if norm == "group":
        layer["groups"] = draw(st.sampled_from([d for d in (1, 2) if channels % d == 0]))
    if image:
        dims = [channels, 3, 3]
        head = [{"kind": "conv2d", "in_channels": channels, "out_channels": channels}]
        tail = [{"kind": "linear", "in_features": channels, "out_features": 3, "input_pooling": "avg_pooling"}]
        return make_spec(head + [layer] + tail, synthetic_task("image_classification", dims, 3), "cnn")
    head = [{"kind": "linear", "in_features": 5, "out_features": channels}]
    tail = [{"kind": "linear", "in_features": channels, "out_features": 2}]
    return make_spec(head + [layer] + tail, synthetic_task("formula_regression", [5], 2), "mlp")


@given(norm_specs())
@settings(max_examples=20, deadline=None)
def test_norm_properties(spec: ExperimentSpec) -> None:
    check_layer_properties(spec)


def test_norm_affine_targets_one_and_zero() -> None:
    spec = make_spec(
        [{"kind": "norm", "type": "layer", "features": 4}, {"kind": "linear", "in_features": 4, "out_features": 2}],
        synthetic_task("formula_regression", [4], 2),
        "mlp",
    )
    entries = {p.name: p for p in compile_spec(spec).targets[0].params}
    assert (entries["layers.0.weight"].init_mean, entries["layers.0.weight"].init_std) == (1.0, 0.0)
    assert (entries["layers.0.bias"].init_mean, entries["layers.0.bias"].init_std) == (0.0, 0.0)


def test_batch_norm_equals_torch_and_keeps_running_stats() -> None:
    spec = make_spec(
        [
            {"kind": "norm", "type": "batch", "features": 3},
            {"kind": "flatten"},
            {"kind": "linear", "in_features": 12, "out_features": 2},
        ],
        synthetic_task("image_classification", [3, 2, 2], 2),
        "cnn",
    )
    ours, reference = build_model(spec).layers[0], torch.nn.BatchNorm2d(3)
    assert set(ours.state_dict()) == set(reference.state_dict())
    x = torch.randn(8, 3, 2, 2)
    for module in (ours, reference):
        module.train()
    assert torch.allclose(ours(x, None), reference(x), atol=1e-6)
    for key, value in reference.state_dict().items():
        assert torch.allclose(ours.state_dict()[key].float(), value.float()), key
    ours.eval(), reference.eval()
    assert torch.allclose(ours(x, None), reference(x), atol=1e-6)
