"""Embedding layer: property harness over generated text specs, plus its runtime checks."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.spec.layers.harness import check_layer_properties, make_spec, synthetic_task
from uhn_spec import ExperimentSpec, build_model, compile_spec
from uhn_spec.descriptors import INDEX_COLUMN, LOCAL_COLUMN
from uhn_spec.layers.base import ForwardContext
from uhn_spec.layers.embedding import EmbeddingSpec


def text_task(vocab: int, max_length: int, classes: int) -> dict:
    return synthetic_task("text_classification", [max_length], classes, vocab_size=vocab)


@st.composite
def embedding_specs(draw: st.DrawFn) -> ExperimentSpec:
    vocab = draw(st.integers(4, 30))
    dim = draw(st.integers(1, 8))
    max_length = draw(st.integers(2, 9))
    classes = draw(st.integers(1, 4))
    layers = [
        {
            "kind": "embedding",
            "num_embeddings": vocab,
            "embedding_dim": dim,
            "max_length": max_length,
            "dropout": draw(st.sampled_from([0.0, 0.2])),
        },
        {
            "kind": "linear",
            "in_features": dim,
            "out_features": classes,
            "input_pooling": draw(st.sampled_from(["first_token", "avg_sequence"])),
        },
    ]
    return make_spec(layers, text_task(vocab, max_length, classes), "transformer")


@given(embedding_specs())
@settings(max_examples=20, deadline=None)
def test_embedding_properties(spec: ExperimentSpec) -> None:
    check_layer_properties(spec)


def small_spec(vocab: int = 10, task_vocab: int = 10, max_length: int = 4) -> ExperimentSpec:
    layers = [
        {"kind": "embedding", "num_embeddings": vocab, "embedding_dim": 3, "max_length": max_length},
        {"kind": "linear", "in_features": 3, "out_features": 2, "input_pooling": "first_token"},
    ]
    return make_spec(layers, text_task(task_vocab, max_length, 2), "transformer")


def test_lookup_adds_the_position_of_each_token() -> None:
    layer = EmbeddingSpec(num_embeddings=6, embedding_dim=2, max_length=3).build_module()
    with torch.no_grad():
        layer.position.copy_(torch.tensor([[[10.0, 20.0], [30.0, 40.0], [50.0, 60.0]]]))
    tokens = torch.tensor([[5, 0], [2, 2]])
    out = layer(tokens, ForwardContext())
    expected = layer.weight[tokens] + layer.position[0, :2]
    assert torch.equal(out, expected)


def test_vocabulary_must_match_the_task() -> None:
    with pytest.raises(ValueError, match=r"layers\[0\]\.num_embeddings: 10 does not match task\.vocab_size \(12\)"):
        small_spec(vocab=10, task_vocab=12)


def test_sequence_longer_than_the_positional_table_is_a_clear_error() -> None:
    model = build_model(small_spec(max_length=4))
    with pytest.raises(ValueError, match="5 tokens is longer than max_length 4"):
        model(torch.full((2, 5), 3))


def test_descriptor_rows_of_weight_and_position() -> None:
    target = compile_spec(small_spec(max_length=4)).targets[0]
    weight, position = target.params[0], target.params[1]
    assert (weight.shape, weight.param_type, weight.init_std) == ((10, 3), 0, 1.0)
    assert (position.shape, position.param_type, position.init_std) == ((1, 4, 3), 1, 0.0)
    rows = target.index_rows().long()
    column = INDEX_COLUMN
    last_weight_row = rows[weight.numel - 1]
    assert last_weight_row[column["embedding_idx"]] == 9  # token row
    assert last_weight_row[column["output_idx"]] == 2  # embedding column
    assert last_weight_row[column["sequence_idx"]] == -1
    position_rows = rows[position.offset : position.offset + position.numel]
    assert position_rows[:, column["sequence_idx"]].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert position_rows[:, column["output_idx"]].tolist() == [0, 1, 2] * 4
    assert set(position_rows[:, column["embedding_idx"]].tolist()) == {-1}
    local = {name: float(target.local_rows[0, LOCAL_COLUMN[name]]) for name in LOCAL_COLUMN}
    assert {k: v for k, v in local.items() if v} == {
        "layer_type": 4.0,
        "output_size": 3.0,
        "embedding_num": 10.0,
        "max_sequence_length": 4.0,
    }
