"""MHA layer: property harness over generated transformer specs, plus parity with PyTorch."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.spec.layers.harness import check_layer_properties, make_spec, synthetic_task
from uhn_spec import ExperimentSpec, compile_spec
from uhn_spec.descriptors import GLOBAL_FIELDS
from uhn_spec.layers.base import ForwardContext
from uhn_spec.layers.mha import MHASpec


def text_task(vocab: int, max_length: int, classes: int) -> dict:
    return synthetic_task("text_classification", [max_length], classes, vocab_size=vocab)


@st.composite
def transformer_specs(draw: st.DrawFn) -> ExperimentSpec:
    # vocab >= 6 and dim >= 2: with vocab 4 every example token but <cls> is one id, and with
    # one feature positions can become indistinguishable after an attention layer without a
    # shortcut; the next attention's query weights then get an exactly zero gradient (a
    # degenerate input, not a bug; hypothesis found both on main).
    vocab = draw(st.integers(6, 20))
    heads = draw(st.integers(1, 3))
    dim = heads * draw(st.integers(2 if heads == 1 else 1, 3))
    max_length = draw(st.integers(2, 8))
    classes = draw(st.integers(1, 3))
    layers: list[dict] = [
        {"kind": "embedding", "num_embeddings": vocab, "embedding_dim": dim, "max_length": max_length}
    ]
    for _ in range(draw(st.integers(1, 2))):
        layers.append(
            {
                "kind": "mha",
                "dim": dim,
                "heads": heads,
                "bias": draw(st.booleans()),
                "activation": draw(st.sampled_from(["none", {"type": "leaky_relu", "param": 0.1}, "elu"])),
                # LN over one feature is constant, over two it is +-1 per token: positions can
                # then become indistinguishable and the next query weights get a zero gradient.
                "norm": draw(st.booleans()) and dim >= 3,
                "shortcut": draw(st.booleans()),
                "dropout": draw(st.sampled_from([0.0, 0.2])),
            }
        )
    layers.append(
        {
            "kind": "linear",
            "in_features": dim,
            "out_features": classes,
            "input_pooling": draw(st.sampled_from(["first_token", "avg_sequence"])),
        }
    )
    return make_spec(layers, text_task(vocab, max_length, classes), "transformer")


@given(transformer_specs())
@settings(max_examples=20, deadline=None)
def test_mha_properties(spec: ExperimentSpec) -> None:
    check_layer_properties(spec)


def torch_reference(layer: torch.nn.Module, bias: bool) -> torch.nn.MultiheadAttention:
    """nn.MultiheadAttention holding the same weights as our layer."""
    spec = layer.spec
    ref = torch.nn.MultiheadAttention(spec.dim, spec.heads, bias=bias, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([layer.q_weight, layer.k_weight, layer.v_weight]))
        ref.out_proj.weight.copy_(layer.out_weight)
        if bias:
            ref.in_proj_bias.copy_(torch.cat([layer.q_bias, layer.k_bias, layer.v_bias]))
            ref.out_proj.bias.copy_(layer.out_bias)
    return ref


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    "pre", [{}, {"activation": {"type": "leaky_relu", "param": 0.1}, "norm": True, "shortcut": True}]
)
def test_matches_torch_multihead_attention_with_padding(bias: bool, pre: dict) -> None:
    torch.manual_seed(0)
    spec = MHASpec(dim=8, heads=2, bias=bias, **pre)
    layer = spec.build_module().eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.5)  # biases too, so that a misplaced bias shows
    x = torch.randn(3, 5, 8)
    padding = torch.zeros(3, 5, dtype=torch.bool)
    padding[1, 3:] = True
    padding[2, 1:] = True
    ours = layer(x, ForwardContext(padding_mask=padding))

    h = x
    if spec.activation.type == "leaky_relu":
        h = F.leaky_relu(h, 0.1)
    if spec.norm:
        h = F.layer_norm(h, (8,))
    with torch.no_grad():
        expected, _ = torch_reference(layer, bias)(h, h, h, key_padding_mask=padding, need_weights=False)
    if spec.shortcut:
        expected = expected + x
    assert torch.allclose(ours, expected, atol=1e-5)


def test_padding_keys_do_not_change_the_output() -> None:
    layer = MHASpec(dim=4, heads=2).build_module().eval()
    x = torch.randn(1, 4, 4)
    padding = torch.tensor([[False, False, True, True]])
    changed = x.clone()
    changed[0, 2:] = torch.randn(2, 4) * 10
    out = layer(x, ForwardContext(padding_mask=padding))
    out_changed = layer(changed, ForwardContext(padding_mask=padding))
    assert torch.allclose(out[0, :2], out_changed[0, :2], atol=1e-6)


def test_heads_that_do_not_divide_dim_name_the_field() -> None:
    layers = [
        {"kind": "embedding", "num_embeddings": 8, "embedding_dim": 6, "max_length": 4},
        {"kind": "mha", "dim": 6, "heads": 4},
        {"kind": "linear", "in_features": 6, "out_features": 2, "input_pooling": "first_token"},
    ]
    with pytest.raises(ValueError, match=r"layers\[1\]\.heads: 4 heads do not divide dim 6"):
        make_spec(layers, text_task(8, 4, 2), "transformer")


def test_param_order_types_and_init_targets() -> None:
    d = 4
    layers = [
        {"kind": "embedding", "num_embeddings": 8, "embedding_dim": d, "max_length": 4},
        {"kind": "mha", "dim": d, "heads": 2},
        {"kind": "linear", "in_features": d, "out_features": 2, "input_pooling": "first_token"},
    ]
    target = compile_spec(make_spec(layers, text_task(8, 4, 2), "transformer")).targets[0]
    mha = [p for p in target.params if p.layer == 1]
    assert [p.name.split(".")[-1] for p in mha] == [
        "q_weight",
        "k_weight",
        "v_weight",
        "q_bias",
        "k_bias",
        "v_bias",
        "out_weight",
        "out_bias",
    ]
    assert [p.param_type for p in mha] == list(range(8))
    assert [p.init_std for p in mha] == [1 / math.sqrt(d)] * 3 + [0.0] * 3 + [1 / math.sqrt(3 * d), 0.0]
    assert float(target.global_row[GLOBAL_FIELDS.index("num_encoders")]) == 1.0


def test_without_bias_no_bias_params_exist() -> None:
    names = [n for n, _ in MHASpec(dim=4, heads=1, bias=False).build_module().named_parameters()]
    assert names == ["q_weight", "k_weight", "v_weight", "out_weight"]
