"""KAN layer: property harness over generated KAN specs, plus the spline and grid maths."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.spec.layers.harness import check_layer_properties, make_spec, synthetic_task
from uhn_spec import ExperimentSpec, compile_spec
from uhn_spec.descriptors import INDEX_COLUMN
from uhn_spec.layers.base import ForwardContext
from uhn_spec.layers.kan import KANSpec, b_spline_bases, kan_grid


@st.composite
def kan_specs(draw: st.DrawFn) -> ExperimentSpec:
    inputs = draw(st.integers(1, 3))
    width = inputs
    layers = []
    for _ in range(draw(st.integers(1, 2))):
        out = draw(st.integers(1, 4))
        layers.append(
            {
                "kind": "kan",
                "in_features": width,
                "out_features": out,
                "grid_size": draw(st.integers(1, 6)),
                "spline_order": draw(st.integers(1, 3)),
                "bias": draw(st.booleans()),
                "activation": draw(st.sampled_from(["none", "silu"])),
            }
        )
        width = out
    return make_spec(layers, synthetic_task("formula_regression", [inputs], width), "kan")


@given(kan_specs())
@settings(max_examples=20, deadline=None)
def test_kan_properties(spec: ExperimentSpec) -> None:
    check_layer_properties(spec)


def initial_grid(grid_size: int, order: int) -> torch.Tensor:
    layer = KANSpec(in_features=1, out_features=1, grid_size=grid_size, spline_order=order).build_module()
    return layer.grid()[0].detach()


def test_initial_grid_is_the_authors_grid() -> None:
    # -1 + 2(i+1)/(G+2k+1): spans (-0.833, 1] for G=5, k=3.
    points = 5 + 2 * 3 + 1
    expected = torch.tensor([-1 + 2 * (i + 1) / points for i in range(points)])
    assert torch.allclose(initial_grid(5, 3), expected, atol=1e-6)


def test_grid_follows_bound_length_and_knots() -> None:
    knots = torch.tensor([[0.0, math.log(3.0)]])  # softmax = [1/4, 3/4]
    grid = kan_grid(torch.tensor([0.5]), torch.tensor([math.log(4.0)]), knots)
    assert torch.allclose(grid, torch.tensor([[1.5, 4.5]]))


@pytest.mark.parametrize("grid_size, order", [(5, 3), (10, 3), (4, 1), (3, 2)])
def test_bases_are_a_partition_of_unity_inside_the_grid(grid_size: int, order: int) -> None:
    grid = initial_grid(grid_size, order)
    # Full support of all bases: between knot k and knot G+k.
    x = torch.linspace(float(grid[order]), float(grid[grid_size + order]) - 1e-4, 50)
    bases = b_spline_bases(x[:, None], grid[None, :], order)
    assert bases.shape == (50, 1, grid_size + order)
    assert bool((bases >= -1e-6).all())
    assert torch.allclose(bases.sum(-1), torch.ones(50, 1), atol=1e-5)


def test_bases_vanish_outside_the_grid() -> None:
    grid = initial_grid(5, 3)
    x = torch.tensor([[-1.5], [-0.9], [1.0], [2.0]])
    assert torch.equal(b_spline_bases(x, grid[None, :], 3), torch.zeros(4, 1, 8))


def test_cubic_basis_matches_the_closed_form_on_a_uniform_grid() -> None:
    grid = torch.arange(0.0, 5.0)[None, :]  # one cubic basis on knots 0..4
    x = torch.tensor([[0.5], [1.5], [2.0], [3.5]])
    # Uniform cubic B-spline: t^3/6 on [0,1), (-3t^3+12t^2-12t+4)/6 on [1,2), symmetric.
    expected = torch.tensor([0.5**3 / 6, (-3 * 1.5**3 + 12 * 1.5**2 - 12 * 1.5 + 4) / 6, 4 / 6, 0.5**3 / 6])
    assert torch.allclose(b_spline_bases(x, grid, 3)[:, 0, 0], expected, atol=1e-6)


def test_forward_is_base_plus_scaled_splines() -> None:
    torch.manual_seed(0)
    spec = KANSpec(in_features=2, out_features=3, activation="silu")
    layer = spec.build_module()
    x = torch.rand(4, 2) * 2 - 1
    bases = b_spline_bases(x, layer.grid(), 3)
    expected = torch.nn.functional.silu(x) @ layer.base_weight.T + layer.base_bias
    for o in range(3):
        for i in range(2):
            expected[:, o] += layer.spline_scale[o, i] * (bases[:, i] @ layer.spline_weight[o, i])
    assert torch.allclose(layer(x, ForwardContext()), expected, atol=1e-6)


def test_param_table_of_the_paper_kan() -> None:
    layers = [
        {"kind": "kan", "in_features": 2, "out_features": 5},
        {"kind": "kan", "in_features": 5, "out_features": 1, "activation": "silu"},
    ]
    target = compile_spec(make_spec(layers, {"dataset": "kv"}, "kan")).targets[0]
    assert target.num_params == 254
    first = target.params[:7]
    assert [p.name.split(".")[-1] for p in first] == [
        "base_weight",
        "base_bias",
        "spline_weight",
        "spline_scale",
        "grid_lower_bound",
        "grid_length",
        "grid_knots",
    ]
    assert [p.param_type for p in first] == list(range(7))
    assert [p.shape for p in first] == [(5, 2), (5,), (5, 2, 8), (5, 2), (2,), (2,), (2, 12)]
    assert [(p.init_mean, p.init_std) for p in first[4:]] == [(-1.0, 0.0), (math.log(2.0), 0.0), (0.0, 0.0)]
    # grid_lower_bound fills input_idx only; output_idx stays unused.
    rows = target.index_rows().long()[first[4].offset : first[4].offset + 2]
    assert rows[:, INDEX_COLUMN["output_idx"]].tolist() == [-1, -1]
    assert rows[:, INDEX_COLUMN["input_idx"]].tolist() == [0, 1]
