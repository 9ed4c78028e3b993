"""GAT layer: property harness over generated GAT specs, plus parity with PyG's GATConv."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch_geometric.nn import GATConv

from tests.conftest import REPO_ROOT
from tests.spec.layers.harness import check_layer_properties, make_spec, synthetic_task
from uhn_spec import ExperimentSpec, build_model, compile_spec, load_spec
from uhn_spec.layers.base import FeatureShape, ForwardContext
from uhn_spec.layers.gat import GATSpec

SPECS = REPO_ROOT / "specs"
ACTIVATIONS = ["none", "silu", {"type": "leaky_relu", "param": 0.1}, {"type": "elu", "param": 1.0}]


@st.composite
def gat_specs(draw: st.DrawFn) -> ExperimentSpec:
    width = draw(st.integers(1, 8))
    features = width
    layers = []
    for _ in range(draw(st.integers(1, 2))):
        heads, out, concat = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.booleans())
        layers.append(
            {
                "kind": "gat",
                "in_features": width,
                "out_features": out,
                "heads": heads,
                "concat": concat,
                "bias": draw(st.booleans()),
                "norm": draw(st.booleans()) and width >= 2,  # LN over one feature is constant
                "dropout": draw(st.sampled_from([0.0, 0.6])),
                "activation": draw(st.sampled_from(ACTIVATIONS)),
            }
        )
        width = heads * out if concat else out
    return make_spec(layers, synthetic_task("graph_node_classification", [features], width), "gat")


@given(gat_specs())
@settings(max_examples=20, deadline=None)
def test_gat_properties(spec: ExperimentSpec) -> None:
    check_layer_properties(spec)


def graph_without_self_loops(nodes: int, edges: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    source = torch.randint(0, nodes, (edges,), generator=gen)
    target = (source + torch.randint(1, nodes, (edges,), generator=gen)) % nodes
    return torch.randn(nodes, 5, generator=gen), torch.stack([source, target])


def pyg_twin(spec: GATSpec, layer: torch.nn.Module, add_self_loops: bool = True) -> GATConv:
    """PyG's GATConv holding the same weights as ``layer``."""
    reference = GATConv(
        spec.in_features, spec.out_features, heads=spec.heads, concat=spec.concat, add_self_loops=add_self_loops
    )
    with torch.no_grad():
        reference.lin.weight.copy_(layer.weight)
        reference.att_src.copy_(layer.att_src)
        reference.att_dst.copy_(layer.att_dst)
        reference.bias.copy_(layer.bias)
    return reference.eval()


@pytest.mark.parametrize("concat", [True, False])
def test_layer_equals_pyg_gatconv_with_the_same_weights(concat: bool) -> None:
    x, edge_index = graph_without_self_loops(nodes=10, edges=30, seed=0)
    spec = GATSpec(in_features=5, out_features=3, heads=4, concat=concat)
    layer = spec.build_module().eval()
    with torch.no_grad():
        layer.bias.normal_()  # a zero bias would not test where it is added
    out = layer(x, ForwardContext(edge_index=edge_index))
    assert out.shape == (10, 12 if concat else 3)
    assert torch.allclose(out, pyg_twin(spec, layer)(x, edge_index), atol=1e-5)


def test_existing_self_loops_are_kept_and_one_more_is_added() -> None:
    # The authors append self-loops without removing those already there (PyG removes them).
    x, edge_index = graph_without_self_loops(nodes=6, edges=15, seed=1)
    edge_index = torch.cat([edge_index, torch.tensor([[2, 4], [2, 4]])], dim=1)
    spec = GATSpec(in_features=5, out_features=2, heads=2)
    layer = spec.build_module().eval()
    with_all_loops = torch.cat([edge_index, torch.arange(6).repeat(2, 1)], dim=1)
    expected = pyg_twin(spec, layer, add_self_loops=False)(x, with_all_loops)
    assert torch.allclose(layer(x, ForwardContext(edge_index=edge_index)), expected, atol=1e-5)


def test_output_width_is_heads_times_out_when_concatenated_else_out() -> None:
    nodes = FeatureShape("nodes", (7,))
    assert GATSpec(in_features=7, out_features=8, heads=8).output_shape(nodes, "l").dims == (64,)
    assert GATSpec(in_features=7, out_features=8, heads=8, concat=False).output_shape(nodes, "l").dims == (8,)


def test_attention_vectors_fill_output_idx_head_major() -> None:
    spec = make_spec(
        [{"kind": "gat", "in_features": 4, "out_features": 3, "heads": 2, "concat": False}],
        synthetic_task("graph_node_classification", [4], 3),
        "gat",
    )
    target = compile_spec(spec).targets[0]
    names = [p.name for p in target.params]
    assert names == ["layers.0.weight", "layers.0.bias", "layers.0.att_src", "layers.0.att_dst"]
    att_src = target.params[2]
    rows = target.index_rows()[att_src.offset : att_src.offset + att_src.numel].long()
    assert rows[:, 2].tolist() == [2] * 6  # param_type ATTENTION_WEIGHTS_SRC
    assert rows[:, 3].tolist() == list(range(6))  # output_idx = h*out + c
    assert bool((rows[:, 4:] == -1).all())
    assert target.params[1].shape == (3,)  # averaged heads: bias over out, not heads*out


def test_init_matches_the_glorot_targets() -> None:
    spec = GATSpec(in_features=40, out_features=8, heads=8)
    torch.manual_seed(0)
    modules = [spec.build_module() for _ in range(10)]
    for name in ("weight", "att_src"):
        values = torch.cat([getattr(m, name).detach().flatten() for m in modules])
        target = spec.param_meta(name, tuple(getattr(modules[0], name).shape)).init_std
        assert abs(float(values.std()) - target) < 0.1 * target, name


@pytest.mark.parametrize(("name", "params"), [("cora_gat", 92_373), ("citeseer_gat", 237_586)])
def test_paper_gats_have_the_paper_parameter_counts(name: str, params: int) -> None:
    spec = load_spec(SPECS / f"{name}.yaml")
    assert spec.num_params == params
    model = build_model(spec).eval()
    x = torch.randn(5, spec.task.info.input_dims[0])
    out = model(x, edge_index=torch.tensor([[0, 1, 2], [1, 2, 3]]))
    assert out.shape == (5, spec.task.info.num_outputs)
