"""GCN layer: property harness over generated GCN specs, plus parity with PyG's GCNConv."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch_geometric.nn import GCNConv

from tests.conftest import REPO_ROOT
from tests.spec.layers.harness import check_layer_properties, make_spec, synthetic_task
from uhn_spec import ExperimentSpec, build_model, load_spec
from uhn_spec.layers.base import ForwardContext
from uhn_spec.layers.gcn import GCN_NORM_CACHE_KEY, GCNSpec

SPECS = REPO_ROOT / "specs"
ACTIVATIONS = ["none", "silu", {"type": "leaky_relu", "param": 0.1}, "elu"]


@st.composite
def gcn_specs(draw: st.DrawFn) -> ExperimentSpec:
    width = draw(st.integers(1, 8))
    features = width
    layers = []
    for _ in range(draw(st.integers(1, 3))):
        out = draw(st.integers(1, 6))
        layers.append(
            {
                "kind": "gcn",
                "in_features": width,
                "out_features": out,
                "bias": draw(st.booleans()),
                "norm": draw(st.booleans()) and width >= 2,  # LN over one feature is constant
                "dropout": draw(st.sampled_from([0.0, 0.5])),
                "activation": draw(st.sampled_from(ACTIVATIONS)),
            }
        )
        width = out
    return make_spec(layers, synthetic_task("graph_node_classification", [features], width), "gcn")


@given(gcn_specs())
@settings(max_examples=20, deadline=None)
def test_gcn_properties(spec: ExperimentSpec) -> None:
    check_layer_properties(spec)


def random_graph(nodes: int, edges: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    edge_index = torch.randint(0, nodes, (2, edges), generator=gen)
    edge_index[:, :3] = torch.tensor([[0, 1, 2], [0, 1, 5]])  # include existing self-loops
    return torch.randn(nodes, 6, generator=gen), edge_index


def test_layer_equals_pyg_gcnconv_with_the_same_weights() -> None:
    x, edge_index = random_graph(nodes=12, edges=40, seed=0)
    layer = GCNSpec(in_features=6, out_features=4).build_module().eval()
    with torch.no_grad():
        layer.bias.normal_()  # a zero bias would not test where it is added
    reference = GCNConv(6, 4)
    with torch.no_grad():
        reference.lin.weight.copy_(layer.weight)
        reference.bias.copy_(layer.bias)
    expected = reference(x, edge_index)
    assert torch.allclose(layer(x, ForwardContext(edge_index=edge_index)), expected, atol=1e-5)


def test_edge_normalisation_is_computed_once_per_model_forward() -> None:
    x, edge_index = random_graph(nodes=8, edges=20, seed=1)
    first = GCNSpec(in_features=6, out_features=5).build_module()
    second = GCNSpec(in_features=5, out_features=3).build_module()
    ctx = ForwardContext(edge_index=edge_index)
    first(x, ctx)
    cached = ctx.cache[GCN_NORM_CACHE_KEY]
    second(torch.randn(8, 5), ctx)
    assert ctx.cache[GCN_NORM_CACHE_KEY] is cached


def test_forward_order_is_activation_norm_then_propagation() -> None:
    x, edge_index = random_graph(nodes=10, edges=30, seed=2)
    spec = GCNSpec(in_features=6, out_features=4, activation="elu", norm=True)
    layer = spec.build_module().eval()
    reference = GCNConv(6, 4)
    with torch.no_grad():
        reference.lin.weight.copy_(layer.weight)
        reference.bias.copy_(layer.bias)
    pre = torch.nn.functional.layer_norm(torch.nn.functional.elu(x), (6,))
    assert torch.allclose(layer(x, ForwardContext(edge_index=edge_index)), reference(pre, edge_index), atol=1e-5)


def test_missing_edges_fail_with_a_usage_hint() -> None:
    layer = GCNSpec(in_features=3, out_features=2).build_module()
    with pytest.raises(ValueError, match=r"edge_index="):
        layer(torch.randn(4, 3), ForwardContext())


def test_gcn_reads_only_node_features() -> None:
    with pytest.raises(ValueError, match=r"layers\[0\]: gcn needs node features"):
        make_spec(
            [{"kind": "gcn", "in_features": 2, "out_features": 3}], synthetic_task("formula_regression", [2], 3), "gcn"
        )


def test_init_matches_the_glorot_target() -> None:
    spec = GCNSpec(in_features=50, out_features=30)
    torch.manual_seed(0)
    module = spec.build_module()
    assert abs(float(module.weight.detach().std()) - spec.param_meta("weight", (30, 50)).init_std) < 0.01
    assert float(module.bias.detach().abs().max()) == 0.0 == spec.param_meta("bias", (30,)).init_std


@pytest.mark.parametrize(("name", "params"), [("cora_gcn", 92_231), ("citeseer_gcn", 237_446)])
def test_paper_gcns_have_the_paper_parameter_counts(name: str, params: int) -> None:
    spec = load_spec(SPECS / f"{name}.yaml")
    assert spec.num_params == params
    nodes = 5
    model = build_model(spec).eval()
    x = torch.randn(nodes, spec.task.info.input_dims[0])
    out = model(x, edge_index=torch.tensor([[0, 1, 2], [1, 2, 3]]))
    assert out.shape == (nodes, spec.task.info.num_outputs)
