"""`uhn import`: an ``nn.Module`` traced with torch.fx becomes the equivalent spec.

Supported modules are treated as leaves of the trace (a ``TransformerEncoderLayer`` or a PyG
``GCNConv`` is one node), so their internal control flow is never traced; the functions and
methods between them (activations, dropout, flatten, sequence mean, residual additions) map to
layers too. An addition of two paths from one fork becomes a ``block`` (the longer path its
layers, the other its shortcut: identity when empty).

Each imported layer records where its parameters and buffers live in the original module, so
generated weights go back into it (``module_state_dict``): a state_dict the original class
loads with ``strict=True``, whose outputs equal the spec's functional target.

The converters of single modules are ``converters``, the trace that strings them together
``tracing``; this module loads the module, writes the spec and maps weights back.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UHNError
from ..spec import ExperimentSpec
from ..tasks import DATASETS
from .converters import Imported, KeyLink, TraceState, converter_of
from .tracing import trace_layers

# --------------------------------------------------------------------------- loading MODULE:ATTR


def load_module_ref(ref: str) -> nn.Module:
    """``path/to/file.py:Name`` or ``package.module:Name``; Name is an ``nn.Module`` class
    or a zero-argument factory, called with no arguments."""
    if ":" not in ref:
        raise UHNError(f"{ref}: expected FILE.py:NAME or MODULE:NAME (a class or zero-argument factory)")
    where, attr = ref.rsplit(":", 1)
    if where.endswith(".py") or "/" in where:
        path = Path(where)
        if not path.is_file():
            raise UHNError(f"{ref}: no such file {where}")
        name = f"uhn_import_{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)}"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look classes up here
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as err:
            raise UHNError(f"{ref}: cannot import {where} ({err})") from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise UHNError(f"{ref}: {where} has no attribute {attr}")
    made = factory()
    if not isinstance(made, nn.Module):
        raise UHNError(f"{ref}: {attr}() gives a {type(made).__name__}, not an nn.Module")
    return made


# --------------------------------------------------------------------------- the spec


@dataclass
class ImportedModel:
    """The spec (as YAML data), the key map back into the module, and the module's count."""

    spec: dict[str, Any]
    layers: list[Imported]
    num_params: int

    def key_map(self) -> list[tuple[str, KeyLink]]:
        return [item for i, layer in enumerate(self.layers) for item in layer.key_map(f"layers.{i}")]


def family_of(kinds: set[str]) -> str:
    for kind, family in (("mha", "transformer"), ("gat", "gat"), ("gcn", "gcn"), ("conv2d", "cnn")):
        if kind in kinds:
            return family
    return "mlp"


def all_kinds(layers: list[Imported]) -> set[str]:
    kinds: set[str] = set()
    for layer in layers:
        kinds.add(layer.layer["kind"])
        kinds |= all_kinds(layer.main) | all_kinds(layer.shortcut)
    return kinds


def graph_features(graph: str, input_shape: tuple[int, ...] | None) -> int:
    """Features per node: the graph dataset's, or ``input_shape`` (F,) for ``synthetic``."""
    if graph == "synthetic":
        if input_shape is None or len(input_shape) != 1:
            raise UHNError("--graph synthetic: give the features per node as --input-shape F")
        return input_shape[0]
    if graph not in DATASETS or DATASETS[graph].input_kind != "nodes":
        graphs = ", ".join(k for k, v in DATASETS.items() if v.input_kind == "nodes")
        raise UHNError(f"--graph: {graph!r} is not a graph dataset; use one of: {graphs}, or synthetic with --input-shape F")
    if input_shape is not None:
        raise UHNError(f"uhn import: --graph {graph} fixes the input; leave out --input-shape")
    return DATASETS[graph].input_dims[0]


def example_input(model: nn.Module, input_shape: tuple[int, ...] | None, graph: str | None) -> tuple[tuple[torch.Tensor, ...], TraceState]:
    gen = torch.Generator().manual_seed(0)
    if graph is not None:
        features = graph_features(graph, input_shape)
        nodes = 6
        return (torch.randn(nodes, features, generator=gen), torch.randint(0, nodes, (2, 12), generator=gen)), TraceState(graph=True)
    assert input_shape is not None
    first = next((m for m in model.modules() if converter_of(m) is not None), None)
    if isinstance(first, nn.Embedding):
        if len(input_shape) != 1:
            raise UHNError("--input-shape: a model that starts with an Embedding reads token ids: give the sequence length T")
        tokens = torch.randint(0, first.num_embeddings, (2, input_shape[0]), generator=gen)
        return (tokens,), TraceState(sequence_length=input_shape[0])
    return (torch.randn(2, *input_shape, generator=gen),), TraceState()


def import_model(
    model: nn.Module,
    input_shape: tuple[int, ...] | None = None,
    graph: str | None = None,
    name: str = "imported",
    dataset: str | None = None,
) -> ImportedModel:
    """Trace ``model`` and give its spec; ``graph`` (a graph dataset) instead of ``input_shape``
    for models called as ``model(x, edge_index)``, or ``graph="synthetic"`` with
    ``input_shape=(features per node,)`` for a synthetic graph task."""
    if input_shape is None and graph is None:
        raise UHNError("uhn import: give --input-shape, or --graph for a graph model")
    model = model.eval()
    example, state = example_input(model, input_shape, graph)
    with torch.no_grad():
        out = model(*example)
    layers = trace_layers(model, example, state)
    outputs = int(out.shape[-1])
    if graph == "synthetic":
        shape = {"input_dims": list(input_shape or ()), "num_outputs": outputs}
        task: dict[str, Any] = {"dataset": "synthetic", "synthetic": {"task_type": "graph_node_classification", **shape}}
    elif graph is not None:
        task = {"dataset": graph}
    elif dataset is not None:
        task = {"dataset": dataset}
    elif state.vocab_size is not None:
        task = {
            "dataset": "synthetic",
            "synthetic": {"task_type": "text_classification", "input_dims": [state.vocab_size], "num_outputs": outputs},
            "vocab_size": state.vocab_size,
            "max_length": state.sequence_length,
        }
    else:
        task_type = "image_classification" if len(input_shape or ()) == 3 else "formula_regression"
        task = {"dataset": "synthetic", "synthetic": {"task_type": task_type, "input_dims": list(input_shape or ()), "num_outputs": outputs}}
    spec = {
        "name": name,
        "description": f"imported from {type(model).__name__} by uhn import",
        "family": family_of(all_kinds(layers)),
        "task": task,
        "layers": [layer.to_yaml() for layer in layers],
    }
    return ImportedModel(spec, layers, sum(p.numel() for p in model.parameters()))


def module_state_dict(imported: ImportedModel, spec_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The spec target's state_dict (parameters and buffers) under the original module's keys:
    MHA's q/k/v blocks are joined back into ``in_proj_weight`` / ``in_proj_bias``."""
    chunks: dict[str, dict[int, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for spec_key, link in imported.key_map():
        tensor = spec_state[spec_key]
        if link.chunk is None:
            out[link.module_key] = tensor
        else:
            chunks.setdefault(link.module_key, {})[link.chunk] = tensor
    for key, parts in chunks.items():
        out[key] = torch.cat([parts[i] for i in sorted(parts)])
    return out


def import_for_spec(ref: str, spec: ExperimentSpec) -> tuple[nn.Module, ImportedModel]:
    """Load ``ref`` and import it with the input the spec's task gives; refuse a module whose
    layers differ from the spec's (it is not the class the spec was imported from)."""
    module = load_module_ref(ref)
    info = spec.task.info
    if info.input_kind == "nodes":
        synthetic = spec.task.dataset == "synthetic"
        imported = import_model(module, input_shape=tuple(info.input_dims) if synthetic else None, graph=spec.task.dataset)
    else:
        shape = (spec.task.max_length,) if info.input_kind == "tokens" else tuple(info.input_dims)
        imported = import_model(module, input_shape=shape)
    traced = ExperimentSpec.model_validate({**imported.spec, "task": spec.task.model_dump(), "name": spec.name})
    if traced.layers != spec.layers:
        first = next((i for i, (a, b) in enumerate(zip(traced.layers, spec.layers)) if a != b), min(len(traced.layers), len(spec.layers)))
        raise UHNError(f"--for-module: {ref} does not match the run's spec (they differ at layers[{first}]); give the class the spec was imported from")
    return module, imported
