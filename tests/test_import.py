"""`uhn import`: stock modules become specs with their exact parameter count, and weights
from the spec load back into the original class (strict) with identical outputs."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from uhn_spec import ExperimentSpec, build_model, compile_spec
from uhn_spec.errors import UHNError
from uhn_spec.importer import import_model, load_module_ref, module_state_dict

from .import_models import models
from .import_models.models import GCN, TextTransformer, WithLSTM, pre_ln_transformer, tiny_resnet

CASES = [
    (tiny_resnet, {"input_shape": (3, 8, 8)}),
    (TextTransformer, {"input_shape": (7,)}),
    (pre_ln_transformer, {"input_shape": (5,)}),
    (lambda: GCN(features=3703, hidden=8), {"graph": "citeseer"}),
]


def example(kwargs: dict, spec: ExperimentSpec) -> tuple[tuple, dict]:
    gen = torch.Generator().manual_seed(3)
    if "graph" in kwargs:
        x, edges = torch.randn(10, 3703, generator=gen), torch.randint(0, 10, (2, 30), generator=gen)
        edges = edges[:, edges[0] != edges[1]]  # PyG's GATConv/GCNConv see no self-loops twice
        return (x, edges), {"x": x, "edge_index": edges}
    shape = kwargs["input_shape"]
    if len(shape) == 1:
        tokens = torch.randint(0, spec.task.vocab_size, (3, shape[0]), generator=gen)
        return (tokens,), {"x": tokens}
    x = torch.randn(4, *shape, generator=gen)
    return (x,), {"x": x}


@pytest.mark.parametrize(("factory", "kwargs"), CASES, ids=["resnet", "post_ln_transformer", "pre_ln_transformer", "gcn"])
def test_import_round_trips_weights_into_the_original_module(factory, kwargs: dict) -> None:
    torch.manual_seed(0)
    module = factory().eval()
    imported = import_model(module, **kwargs)
    spec = ExperimentSpec.model_validate(imported.spec)
    assert spec.num_params == imported.num_params == sum(p.numel() for p in module.parameters())

    # Weights as a generator gives them: one flat vector, sliced by the plan.
    target = compile_spec(spec).targets[0]
    flat = torch.randn(target.num_params, generator=torch.Generator().manual_seed(1)) * 0.3
    params = {p.name: flat[p.offset : p.offset + p.numel].view(p.shape) for p in target.params}
    skeleton = build_model(spec).eval()
    for name, buffer in skeleton.named_buffers():  # running statistics: not the defaults
        if name.endswith("running_var"):
            buffer.uniform_(0.5, 2.0)
        elif name.endswith("running_mean"):
            buffer.normal_()
    spec_state = {**dict(skeleton.named_buffers()), **params}

    module.load_state_dict(module_state_dict(imported, spec_state), strict=True)
    args, inputs = example(kwargs, spec)
    with torch.no_grad():
        ours = functional_call(skeleton, params, args=(), kwargs=inputs)
        theirs = module(*args)
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4), float((ours - theirs).abs().max())


def test_unsupported_op_is_one_line_naming_it_and_the_nearest_form() -> None:
    with pytest.raises(UHNError) as err:
        import_model(WithLSTM(), input_shape=(5, 4))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("rnn: LSTM is not supported; nearest supported form:")
    assert "MultiheadAttention" in message


def test_module_refs_by_file_and_by_dotted_path() -> None:
    by_file = load_module_ref(f"{models.__file__}:tiny_resnet")
    by_path = load_module_ref("tests.import_models.models:tiny_resnet")
    assert sum(p.numel() for p in by_file.parameters()) == sum(p.numel() for p in by_path.parameters()) == 1391
    with pytest.raises(UHNError, match="has no attribute"):
        load_module_ref("tests.import_models.models:nothing")
