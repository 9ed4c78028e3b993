"""Exported: a whole module captured by ``torch.export`` (``uhn import``), run from its graph.

The graph (``uhn_spec.graph_ops``: whitelisted ATen operators as data) does the computing;
the spec says which tensors it reads and how each is described. Its parameters are grouped
into *parts*, one descriptor layer each, in the order the graph first uses them. A part is a
paper kind where the module is one (Linear, Conv2d, Embedding, MultiheadAttention, GCNConv,
GATConv, a norm: exactly that kind's descriptors and init targets) or ``generic``: the
tensors of one other module (a depthwise conv, a class token, a position table, a layer
scale), each named by its role in the graph and described position by position.

In a spec file ``graph`` names a JSON file next to the spec (``resolve_graph_files`` reads it
when the spec is read); in a plan or run the graph data is part of the spec.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from ..errors import SpecError
from ..fields import NAME_CHARACTERS, StrictModel
from ..graph_ops import ExportedGraph, GraphProgram
from . import register
from .base import FeatureShape, ForwardContext, LayerSpec, ParamMeta
from .conv2d import Conv2dSpec
from .embedding import EmbeddingSpec
from .gat import GATSpec
from .gcn import GCNSpec
from .linear import LinearSpec
from .mha import MHASpec
from .norm import NormLayer, NormSpec

# param_type ids of a generic part: the role its tensor plays in the graph (how the first
# operator that computes with it uses it; views and copies in between are looked through).
GENERIC_PARAM_TYPES: dict[str, int] = {
    "weight": 0,  # multiplied with the features: a convolution, linear or matmul operand
    "bias": 1,  # the bias operand of a convolution or linear
    "scale": 2,  # multiplied elementwise: layer scale, a norm's weight, a gate
    "shift": 3,  # added elementwise: a position table, a norm's bias
    "token": 4,  # concatenated to the features: a class token
    "table": 5,  # looked up or indexed: an embedding table
    "other": 6,  # anything else
}

# The index field each dimension of a generic tensor fills, by rank: dimension 0 is the
# output position, 1 the input position, the rest kernel positions (a rank-5 tensor's last
# two share kernel_w_idx, flattened row-major).
GENERIC_INDEX_FIELDS = ("output_idx", "input_idx", "kernel_h_idx", "kernel_w_idx")


def generic_index_fields(rank: int) -> tuple[str, ...]:
    if rank <= 2:
        return GENERIC_INDEX_FIELDS[:rank]
    if rank == 3:
        return ("output_idx", "input_idx", "kernel_w_idx")
    return GENERIC_INDEX_FIELDS + ("kernel_w_idx",) * (rank - 4)


class GenericTensor(StrictModel):
    """One tensor of a generic part: its shape and init target (the mean and standard
    deviation of the module's own initial values, as imported)."""

    shape: list[int] = Field(max_length=8)
    init_mean: float = 0.0
    init_std: float = Field(0.0, ge=0.0)

    @field_validator("shape")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(d < 1 for d in value):
            raise ValueError(f"sizes must be >= 1 (got {value})")
        return value


class GenericPartSpec(LayerSpec):
    """The tensors of a module that is not a paper kind, keyed by role
    (``GENERIC_PARAM_TYPES``). Only a part of an ``exported`` layer; not a layer of its own."""

    kind: Literal["generic"] = "generic"
    layer_type = 21
    param_types = GENERIC_PARAM_TYPES
    module: str = Field("", description="the module path in the original model ('' for the model itself)")
    tensors: dict[str, GenericTensor] = Field(min_length=1)
    groups: int = Field(1, ge=1, description="convolution groups, when a convolution reads the weight")

    @field_validator("tensors")
    @classmethod
    def _roles(cls, value: dict[str, GenericTensor]) -> dict[str, GenericTensor]:
        unknown = [role for role in value if role not in GENERIC_PARAM_TYPES]
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not a role; use one of: {', '.join(GENERIC_PARAM_TYPES)}")
        return dict(sorted(value.items(), key=lambda item: GENERIC_PARAM_TYPES[item[0]]))

    def build_module(self) -> nn.Module:
        return GenericPart(self)

    def param_meta(self, name: str, shape: tuple[int, ...]) -> ParamMeta:
        tensor = self.tensors[name]
        return ParamMeta(GENERIC_PARAM_TYPES[name], generic_index_fields(len(shape)), tensor.init_mean, tensor.init_std)

    def local_fields(self) -> dict[str, float]:
        """Shape as structure: the first tensor's sizes (output, input, last kernel size)."""
        shape = next(iter(self.tensors.values())).shape
        return {
            "bias_type": 1.0 if "bias" in self.tensors else 0.0,
            "output_size": float(shape[0]) if shape else 1.0,
            "input_size": float(shape[1]) if len(shape) > 1 else 0.0,
            "kernel_size": float(shape[-1]) if len(shape) > 2 else 0.0,
            "group_num": float(self.groups),
        }


class GenericPart(nn.Module):
    def __init__(self, spec: GenericPartSpec):
        super().__init__()
        for role, tensor in spec.tensors.items():
            value = torch.empty(tensor.shape)
            if value.device.type != "meta":
                value.normal_(tensor.init_mean, tensor.init_std) if tensor.init_std > 0 else value.fill_(
                    tensor.init_mean
                )
            self.register_parameter(role, nn.Parameter(value))


PartLayer = Annotated[
    LinearSpec | Conv2dSpec | NormSpec | EmbeddingSpec | MHASpec | GCNSpec | GATSpec | GenericPartSpec,
    Field(discriminator="kind"),
]


class ExportedPart(StrictModel):
    """One descriptor layer of an exported graph: its layer (a paper kind or ``generic``)
    and where each of its tensors lives in the original module (``keys``: tensor name ->
    state_dict key; tensors sharing a key are its blocks, concatenated along dimension 0,
    as MultiheadAttention's q, k, v in ``in_proj_weight``)."""

    layer: PartLayer
    keys: dict[str, str]


@register
class ExportedSpec(LayerSpec):
    """A module captured by torch.export: its graph and its parameter parts."""

    kind: Literal["exported"] = "exported"
    layer_type = 20
    graph: ExportedGraph = Field(description="the graph data (in a spec file: a JSON file name next to the spec)")
    input_kind: Literal["image", "vector", "tokens", "nodes"]
    input_dims: list[int] = Field(
        min_length=1, description="one example's input shape (a graph: features per node; tokens: the vocabulary size)"
    )
    output_features: int = Field(ge=1)
    parts: list[ExportedPart]

    @field_validator("graph", mode="before")
    @classmethod
    def _graph_is_data(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError(f"{value!r}: a graph file is read when the spec is read from a file (uhn_spec.load_spec)")
        return value

    @model_validator(mode="after")
    def _state_is_bound(self) -> ExportedSpec:
        bound = {key for part in self.parts for key in part.keys.values()}
        graph = self.graph
        for placeholder, key in {**graph.params, **graph.buffers}.items():
            if key not in bound:
                raise ValueError(f"graph: {placeholder} reads {key}, which no part holds")
        if len(graph.inputs) > 2 or (len(graph.inputs) == 2) != (self.input_kind == "nodes"):
            raise ValueError(f"graph.inputs: {graph.inputs}; a graph model reads (x, edge_index), any other one input")
        return self

    def children(self) -> list[tuple[str, LayerSpec]]:
        return [(f"parts.{i}", part.layer) for i, part in enumerate(self.parts)]

    def flat_layers(self, prefix: str) -> list[tuple[str, LayerSpec]]:
        """Only the parts: the graph itself holds no parameters and has no descriptor row."""
        return [(f"{prefix}.{path}", layer) for path, layer in self.children()]

    def output_shape(self, inp: FeatureShape, path: str) -> FeatureShape:
        if inp.kind != self.input_kind or list(inp.dims) != self.input_dims:
            raise self.fail(
                f"{path}.input_dims",
                f"the graph reads {self.input_kind} {'x'.join(map(str, self.input_dims))}, "
                f"got {inp.describe()} from {inp.origin}",
            )
        return FeatureShape(
            "nodes" if self.input_kind == "nodes" else "vector", (self.output_features,), f"{path}.output_features"
        )

    def build_module(self) -> nn.Module:
        return ExportedLayer(self)

    def param_meta(self, name: str, shape: tuple[int, ...]) -> ParamMeta:
        raise KeyError(name)

    def local_fields(self) -> dict[str, float]:
        return {}


class ExportedLayer(nn.Module):
    """Runs the graph with the parts' tensors (generated ones under ``functional_call``).
    BatchNorm nodes run their norm part, which keeps and recalibrates running statistics;
    dropout follows the module's mode."""

    def __init__(self, spec: ExportedSpec):
        super().__init__()
        self.spec = spec
        self.parts = nn.ModuleList(part.layer.build_module() for part in spec.parts)
        self.program = GraphProgram(spec.graph)
        where: dict[str, list[tuple[int, str]]] = {}
        for i, part in enumerate(spec.parts):
            for name, key in part.keys.items():
                where.setdefault(key, []).append((i, name))
        self._sources = {
            placeholder: where[key] for placeholder, key in {**spec.graph.params, **spec.graph.buffers}.items()
        }
        for placeholder, constant in spec.graph.constants.items():
            self.register_buffer(placeholder, constant.tensor(), persistent=constant.key is not None)
        self._norm_nodes = self._batch_norm_nodes()

    def _batch_norm_nodes(self) -> dict[str, int]:
        """Batch-norm nodes whose running mean is a norm part's buffer -> that part."""
        found = {}
        for node in self.spec.graph.nodes:
            if node.op.startswith("aten.batch_norm.") and len(node.args) > 3 and isinstance(node.args[3], dict):
                sources = self._sources.get(node.args[3].get("ref", ""), [])
                if len(sources) == 1 and isinstance(self.parts[sources[0][0]], NormLayer):
                    found[node.name] = sources[0][0]
        return found

    def _tensor(self, placeholder: str) -> torch.Tensor:
        sources = self._sources[placeholder]
        blocks = [getattr(self.parts[i], name) for i, name in sources]
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        graph = self.spec.graph
        feeds: dict[str, Any] = {graph.inputs[0]: x}
        if len(graph.inputs) == 2:
            feeds[graph.inputs[1]] = ctx.edge_index
        feeds.update({placeholder: self._tensor(placeholder) for placeholder in self._sources})
        feeds.update({placeholder: getattr(self, placeholder) for placeholder in graph.constants})
        overrides = {name: self._norm_call(part, ctx) for name, part in self._norm_nodes.items()}
        out = self.program.run(feeds, self.training, x.device, overrides)
        return out[0] if isinstance(out, (list, tuple)) else out

    def _norm_call(self, part: int, ctx: ForwardContext) -> Any:
        module = self.parts[part]
        return lambda args: module(args[0], ctx)


# --------------------------------------------------------------------------- spec files

# The largest graph file a spec may name (bytes).
MAX_GRAPH_FILE_BYTES = 256 * 2**20


def resolve_graph_files(data: Any, source: Path | None) -> Any:
    """Replace each ``exported`` layer's graph file name by the file's data. The file must
    be a plain name of a regular file in the spec's folder (no path, no link out of it)."""
    if not isinstance(data, dict) or not isinstance(data.get("layers"), list):
        return data
    base = source.parent if source is not None else Path.cwd()
    layers = list(data["layers"])
    for i, layer in enumerate(layers):
        if isinstance(layer, dict) and layer.get("kind") == "exported" and isinstance(layer.get("graph"), str):
            layers[i] = {**layer, "graph": read_graph_file(base, layer["graph"], f"layers[{i}].graph")}
    return {**data, "layers": layers}


def read_graph_file(base: Path, name: str, path: str) -> Any:
    if not NAME_CHARACTERS.fullmatch(name) or not name.endswith(".json"):
        raise SpecError(path, f"{name!r}: give the name of a .json file in the spec's folder (no path)")
    file = base / name
    if file.is_symlink() or not file.is_file():
        raise SpecError(path, f"{file}: no such graph file (uhn import writes it next to the spec)")
    if file.stat().st_size > MAX_GRAPH_FILE_BYTES:
        raise SpecError(path, f"{file}: larger than {MAX_GRAPH_FILE_BYTES // 2**20} MiB")
    try:
        return json.loads(file.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as err:
        raise SpecError(path, f"{file}: not a graph file ({err}); import the module again") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a graph value")


__all__ = ["GENERIC_PARAM_TYPES", "ExportedSpec", "GenericPartSpec", "resolve_graph_files"]
