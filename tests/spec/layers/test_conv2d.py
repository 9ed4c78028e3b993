"""Conv2d layer: property harness over generated CNN specs, plus the shape rules."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import REPO_ROOT
from tests.spec.layers.harness import check_layer_properties, make_spec, synthetic_task
from uhn_spec import ExperimentSpec, SpecError, build_model, load_spec, spec_from_text
from uhn_spec.layers.base import FeatureShape, ForwardContext
from uhn_spec.layers.conv2d import Conv2dSpec

SPECS = REPO_ROOT / "specs"
ACTIVATIONS = ["none", "silu", {"type": "leaky_relu", "param": 0.1}, "elu"]


@st.composite
def cnn_specs(draw: st.DrawFn) -> ExperimentSpec:
    channels, height, width = draw(st.integers(1, 4)), draw(st.integers(2, 6)), draw(st.integers(2, 6))
    dims = [channels, height, width]
    layers = []
    for _ in range(draw(st.integers(1, 3))):
        can_halve = height >= 2 and width >= 2
        pooling = draw(st.sampled_from(["none", "avg_pooling", "max_pooling", "conv_pooling"]))
        if pooling in ("avg_pooling", "max_pooling") and not can_halve:
            pooling = "none"
        if pooling in ("avg_pooling", "max_pooling"):
            height, width = height // 2, width // 2
        if pooling == "conv_pooling":
            height, width = (height + 1) // 2, (width + 1) // 2
        out = draw(st.integers(1, 5))
        groups = draw(st.sampled_from([g for g in range(1, channels + 1) if channels % g == 0]))
        kernel = draw(st.sampled_from([1, 3]))
        layers.append(
            {
                "kind": "conv2d",
                "in_channels": channels,
                "out_channels": out,
                "kernel_size": kernel,
                "bias": draw(st.booleans()),
                # A GroupNorm group of one channel removes the previous conv's bias exactly,
                # which would leave that bias without gradient.
                "norm": draw(st.booleans()) and channels // groups >= 2,
                "groups": groups,
                "shortcut": draw(st.booleans()) and out == channels and pooling == "none",
                "dropout": draw(st.sampled_from([0.0, 0.1])),
                "activation": draw(st.sampled_from(ACTIVATIONS)),
                "stage_pooling": pooling,
            }
        )
        channels = out
    classes = draw(st.integers(1, 4))
    head = draw(st.sampled_from(["avg_pooling", "max_pooling", "reshape_to_2d"]))
    head_in = channels * height * width if head == "reshape_to_2d" else channels
    layers.append({"kind": "linear", "in_features": head_in, "out_features": classes, "input_pooling": head})
    return make_spec(
        layers, synthetic_task("image_classification", dims, classes), "cnn", cnn_stage_num=len(layers) - 1
    )


@given(cnn_specs())
@settings(max_examples=20, deadline=None)
def test_conv2d_properties(spec: ExperimentSpec) -> None:
    check_layer_properties(spec)


def conv(**fields: object) -> Conv2dSpec:
    return Conv2dSpec.model_validate({"in_channels": 4, "out_channels": 4, **fields})


def one_conv_spec(image: list[int], classes: int, **fields: object) -> ExperimentSpec:
    layer = {"kind": "conv2d", "in_channels": image[0], "out_channels": 8, **fields}
    head = {"kind": "linear", "in_features": 8, "out_features": classes, "input_pooling": "avg_pooling"}
    return make_spec([layer, head], synthetic_task("image_classification", image, classes), "cnn")


@pytest.mark.parametrize(
    ("pooling", "size", "expected"),
    [("conv_pooling", 28, 14), ("conv_pooling", 7, 4), ("avg_pooling", 7, 3), ("max_pooling", 8, 4), ("none", 7, 7)],
)
def test_downsampling_matches_pytorch_arithmetic(pooling: str, size: int, expected: int) -> None:
    spec = conv(stage_pooling=pooling)
    shape = spec.output_shape(FeatureShape("image", (4, size, size + 1)), "layers[0]")
    module = spec.build_module()
    out = module(torch.randn(2, 4, size, size + 1), ForwardContext())
    assert shape.dims == tuple(out.shape[1:])
    assert shape.dims[1] == expected


def test_forward_is_preactivation_groupnorm_conv_plus_shortcut() -> None:
    spec = conv(activation={"type": "leaky_relu", "param": 0.1}, norm=True, groups=2, shortcut=True)
    module = spec.build_module()
    x = torch.randn(2, 4, 5, 5)
    pre = torch.nn.functional.group_norm(torch.nn.functional.leaky_relu(x, 0.1), 2)
    expected = torch.nn.functional.conv2d(pre, module.weight, module.bias, padding=1) + x
    assert torch.allclose(module(x, ForwardContext()), expected, atol=1e-6)


def test_even_kernel_is_rejected_with_its_path() -> None:
    text = """
name: even
family: cnn
task: {dataset: synthetic, synthetic: {task_type: image_classification, input_dims: [1, 4, 4], num_outputs: 2}}
layers:
  - {kind: conv2d, in_channels: 1, out_channels: 2, kernel_size: 4}
  - {kind: linear, in_features: 2, out_features: 2, input_pooling: avg_pooling}
"""
    with pytest.raises(SpecError, match=r"layers\[0\]\.kernel_size: must be odd.*got 4"):
        spec_from_text(text)


def test_groups_must_divide_input_channels() -> None:
    with pytest.raises(ValueError, match=r"layers\[0\]\.groups: 4 GroupNorm groups do not divide in_channels 6"):
        one_conv_spec([6, 4, 4], 2, norm=True, groups=4)
    # Without the norm the groups value is only a descriptor field.
    one_conv_spec([6, 4, 4], 2, norm=False, groups=4)


def test_shortcut_needs_the_same_shape() -> None:
    with pytest.raises(ValueError, match=r"layers\[0\]\.shortcut: .*8x4x4 -> 8x2x2"):
        make_spec(
            [
                {
                    "kind": "conv2d",
                    "in_channels": 8,
                    "out_channels": 8,
                    "shortcut": True,
                    "stage_pooling": "conv_pooling",
                },
                {"kind": "linear", "in_features": 8, "out_features": 2, "input_pooling": "avg_pooling"},
            ],
            synthetic_task("image_classification", [8, 4, 4], 2),
            "cnn",
        )


def test_pooling_a_single_pixel_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"layers\[0\]\.stage_pooling: avg_pooling halves"):
        one_conv_spec([1, 1, 1], 2, stage_pooling="avg_pooling")


def test_local_row_and_init_targets() -> None:
    spec = conv(kernel_size=5, norm=True, groups=2, stage_pooling="conv_pooling", dropout=0.1)
    fields = spec.local_fields()
    assert (fields["group_num"], fields["kernel_size"], fields["stage_wise_pooling_type"]) == (2, 5, 3)
    # Module init and the descriptor's target std agree (PyTorch's U(+-1/sqrt(in*k*k))).
    torch.manual_seed(0)
    weights = torch.cat([spec.build_module().weight.detach().flatten() for _ in range(20)])
    assert abs(float(weights.std()) - spec.param_meta("weight", (4, 4, 5, 5)).init_std) < 0.005


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("mnist_cnn8", 74_762),
        ("cifar10_cnn20", 269_034),
        ("cifar10_cnn32", 463_018),
        ("cifar10_cnn44", 657_002),
        ("cifar10_cnn56", 850_986),
    ],
)
def test_paper_cnns_have_the_paper_parameter_counts(name: str, params: int) -> None:
    spec = load_spec(SPECS / f"{name}.yaml")
    assert spec.num_params == params
    assert len(spec.layers) == (8 if name == "mnist_cnn8" else int(name.removeprefix("cifar10_cnn")))


def test_cnn8_maps_mnist_images_to_ten_logits() -> None:
    model = build_model(load_spec(SPECS / "mnist_cnn8.yaml")).eval()
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
