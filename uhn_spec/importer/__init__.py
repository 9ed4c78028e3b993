"""`uhn import`: an ``nn.Module`` captured with ``torch.export`` becomes a spec of one
``exported`` layer (``exported_graph``): the module's ATen graph as data, and a descriptor part
for every parameter tensor (the paper's kinds where the module is one, a generic scheme
elsewhere).

Each part records where its tensors live in the original module, so generated weights go back
into it (``module_state_dict``): a state_dict the original class loads with ``strict=True``,
whose outputs equal the spec's functional target.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UHNError
from ..spec import ExperimentSpec
from ..tasks import DATASETS
from .exported_graph import exported_layer, import_failure
from .links import Imported, KeyLink

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
    missing = required_arguments(factory)
    if missing:
        raise UHNError(
            f"{ref}: {attr} needs arguments ({', '.join(missing)}); give a zero-argument factory, "
            f"e.g. def make(): return {attr}(...), and import FILE:make"
        )
    made = factory()
    if not isinstance(made, nn.Module):
        raise UHNError(f"{ref}: {attr}() gives a {type(made).__name__}, not an nn.Module")
    return made


def required_arguments(factory: Any) -> list[str]:
    """Parameters of ``factory`` (a class: its constructor) that have no default."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in signature.parameters.values() if p.kind in kinds and p.default is inspect.Parameter.empty]


# --------------------------------------------------------------------------- the spec


@dataclass
class ImportedModel:
    """The spec (as YAML data), the key map back into the module, and the module's count.
    ``versions``: the module's state_dict version records (``state_dict()._metadata``), which
    some classes' loaders require (torchvision's MNASNet refuses a state dict without them)."""

    spec: dict[str, Any]
    layers: list[Imported]
    num_params: int
    versions: dict[str, dict[str, Any]] | None = None

    def key_map(self) -> list[tuple[str, KeyLink]]:
        return [item for i, layer in enumerate(self.layers) for item in layer.key_map(f"layers.{i}")]


def family_of(kinds: set[str]) -> str:
    for kind, family in (("mha", "transformer"), ("gat", "gat"), ("gcn", "gcn"), ("conv2d", "cnn")):
        if kind in kinds:
            return family
    return "mlp"


def graph_features(graph: str, input_shape: tuple[int, ...] | None) -> int:
    """Features per node: the graph dataset's, or ``input_shape`` (F,) for ``synthetic``."""
    if graph == "synthetic":
        if input_shape is None or len(input_shape) != 1:
            raise UHNError("--graph synthetic: give the features per node as --input-shape F")
        return input_shape[0]
    if graph not in DATASETS or DATASETS[graph].input_kind != "nodes":
        graphs = ", ".join(k for k, v in DATASETS.items() if v.input_kind == "nodes")
        raise UHNError(
            f"--graph: {graph!r} is not a graph dataset; use one of: {graphs}, or synthetic with --input-shape F"
        )
    if input_shape is not None:
        raise UHNError(f"uhn import: --graph {graph} fixes the input; leave out --input-shape")
    return DATASETS[graph].input_dims[0]


Example = tuple[tuple[torch.Tensor, ...], str, list[int], int | None]


def example_input(model: nn.Module, input_shape: tuple[int, ...] | None, graph: str | None) -> Example:
    """The example the module is captured with, its input kind and dims, and (token models)
    the vocabulary: a model whose first Linear/Conv/Embedding is an Embedding reads token ids."""
    gen = torch.Generator().manual_seed(0)
    if graph is not None:
        features = graph_features(graph, input_shape)
        nodes = 6
        edges = torch.randint(0, nodes, (2, 12), generator=gen)
        return (torch.randn(nodes, features, generator=gen), edges), "nodes", [features], None
    assert input_shape is not None
    reading = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    first = next((m for m in model.modules() if isinstance(m, reading)), None)
    if isinstance(first, nn.Embedding):
        if len(input_shape) != 1:
            raise UHNError(
                "--input-shape: a model that starts with an Embedding reads token ids: give the sequence length T"
            )
        tokens = torch.randint(0, first.num_embeddings, (2, input_shape[0]), generator=gen)
        return (tokens,), "tokens", [first.num_embeddings], first.num_embeddings
    kind = "image" if len(input_shape) == 3 else "vector"
    return (torch.randn(2, *input_shape, generator=gen),), kind, list(input_shape), None


def import_model(
    model: nn.Module,
    input_shape: tuple[int, ...] | None = None,
    graph: str | None = None,
    name: str = "imported",
    dataset: str | None = None,
) -> ImportedModel:
    """Capture ``model`` with torch.export and give its spec (one ``exported`` layer, the
    graph data inline); ``graph`` (a graph dataset) instead of ``input_shape`` for models
    called as ``model(x, edge_index)``, or ``graph="synthetic"`` with
    ``input_shape=(features per node,)`` for a synthetic graph task."""
    if input_shape is None and graph is None:
        raise UHNError("uhn import: give --input-shape, or --graph for a graph model")
    model = model.eval()
    example, input_kind, input_dims, vocab = example_input(model, input_shape, graph)
    try:
        with torch.no_grad():
            out = model(*example)
    except Exception as err:  # the user's forward fails on the example: say so in one line
        raise import_failure(model, err) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UHNError(f"{type(model).__name__}: the module must return one (batch, outputs) tensor; it returns {got}")
    outputs = int(out.shape[-1])
    sequence_length = input_shape[0] if vocab and input_shape else 0
    layer, links = exported_layer(model, example, input_kind, input_dims, outputs, sequence_length)
    if graph == "synthetic":
        shape = {"input_dims": list(input_shape or ()), "num_outputs": outputs}
        task: dict[str, Any] = {
            "dataset": "synthetic",
            "synthetic": {"task_type": "graph_node_classification", **shape},
        }
    elif graph is not None:
        task = {"dataset": graph}
    elif dataset is not None:
        task = {"dataset": dataset}
    elif vocab is not None:
        task = {
            "dataset": "synthetic",
            "synthetic": {"task_type": "text_classification", "input_dims": [vocab], "num_outputs": outputs},
            "vocab_size": vocab,
            "max_length": (input_shape or (0,))[0],
        }
    else:
        task_type = "image_classification" if len(input_shape or ()) == 3 else "formula_regression"
        task = {
            "dataset": "synthetic",
            "synthetic": {"task_type": task_type, "input_dims": list(input_shape or ()), "num_outputs": outputs},
        }
    kinds = {part["layer"]["kind"] for part in layer["parts"]}
    spec = {
        "name": name,
        "description": f"imported from {type(model).__name__} by uhn import",
        "family": "cnn" if input_kind == "image" and family_of(kinds) == "mlp" else family_of(kinds),
        "task": task,
        "layers": [layer],
    }
    versions = getattr(model.state_dict(), "_metadata", None)
    return ImportedModel(spec, links, sum(p.numel() for p in model.parameters()), versions)


def module_state_dict(imported: ImportedModel, spec_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The spec target's state_dict (parameters and buffers) under the original module's keys:
    MHA's q/k/v blocks are joined back into ``in_proj_weight`` / ``in_proj_bias``; every tensor
    is contiguous (as safetensors writes them), and the module's version records ride along,
    as on its own ``state_dict()``."""
    chunks: dict[str, dict[int, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for spec_key, link in imported.key_map():
        tensor = spec_state[spec_key]
        if link.chunk is None:
            out[link.module_key] = tensor.contiguous()
        else:
            chunks.setdefault(link.module_key, {})[link.chunk] = tensor
    for key, parts in chunks.items():
        out[key] = torch.cat([parts[i] for i in sorted(parts)])
    if imported.versions is not None:
        out = OrderedDict(out)
        out._metadata = OrderedDict(imported.versions)  # type: ignore[attr-defined]  # torch's own attribute
    return out


def import_for_spec(ref: str, spec: ExperimentSpec) -> tuple[nn.Module, ImportedModel]:
    """Load ``ref`` and import it with the input the spec's task gives; refuse a module whose
    layers differ from the spec's (it is not the class the spec was imported from)."""
    module = load_module_ref(ref)
    info = spec.task.info
    if info.input_kind == "nodes":
        synthetic = spec.task.dataset == "synthetic"
        imported = import_model(
            module, input_shape=tuple(info.input_dims) if synthetic else None, graph=spec.task.dataset
        )
    else:
        shape = (spec.task.max_length,) if info.input_kind == "tokens" else tuple(info.input_dims)
        imported = import_model(module, input_shape=shape)  # type: ignore[arg-type]  # text: max_length filled from the embedding
    again = ExperimentSpec.model_validate({**imported.spec, "task": spec.task.model_dump(), "name": spec.name})
    ours, theirs = comparable(again.layers), comparable(spec.layers)
    if ours != theirs:
        first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        raise UHNError(
            f"--for-module: {ref} does not match the run's spec (they differ at layers[{first}]); "
            "give the class the spec was imported from"
        )
    return module, imported


def comparable(layers: list[Any]) -> list[Any]:
    """Layers as data without the init targets of generic tensors (the statistics of one
    instance's random initial values, which differ from instance to instance)."""
    out = []
    for layer in layers:
        data = layer.model_dump(mode="json")
        for part in data.get("parts", []):
            for tensor in part["layer"].get("tensors", {}).values():
                tensor.pop("init_mean"), tensor.pop("init_std")
        for constant in data.get("graph", {}).get("constants", {}).values():
            if constant["key"] is not None:
                constant.pop("values")  # buffers: the run's values are exported, not the instance's
        out.append(data)
    return out
