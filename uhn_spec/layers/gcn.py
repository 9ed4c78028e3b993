"""GCN layer: act -> [LN] -> dropout -> x W^T -> normalised neighbourhood sum -> + b.

The propagation is Kipf & Welling's: self-loops are added where missing and every edge
j -> i is weighted by deg(j)^-1/2 deg(i)^-1/2 (PyG's ``gcn_norm``), so a layer equals
``torch_geometric.nn.GCNConv`` given the same weights.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..enums import LayerType
from ..errors import SpecError
from . import register
from .base import (
    COMMON_DOMAINS,
    Activation,
    FeatureShape,
    ForwardContext,
    LayerSpec,
    ParamMeta,
    activate,
    common_local_fields,
    feature_norm,
)

# A GCN has no shortcut field, so only these categorical fields can vary.
GRAPH_DOMAINS: dict[str, tuple[float, float]] = {
    name: domain for name, domain in COMMON_DOMAINS.items() if name != "shortcut_type"
}

GCN_NORM_CACHE_KEY = "gcn_norm"


def require_edges(ctx: ForwardContext, kind: str) -> torch.Tensor:
    if ctx.edge_index is None:
        raise ValueError(f"a {kind} layer needs the graph: call the model as model(x, edge_index=...)")
    return ctx.edge_index


def check_node_input(kind: str, inp: FeatureShape, in_features: int, path: str) -> None:
    """Graph layers read one feature vector per node (a graph task's input)."""
    if inp.kind != "nodes":
        raise SpecError(path, f"{kind} needs node features (a graph task), got {inp.describe()} from {inp.origin}")
    if inp.features != in_features:
        raise SpecError(f"{path}.in_features", f"{in_features} does not match {inp.origin} ({inp.features})")


def normalised_edges(ctx: ForwardContext, num_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Edges with self-loops and their symmetric-normalised weights, computed once per model
    forward: every GCN layer of a model propagates over the same graph."""
    cached = ctx.cache.get(GCN_NORM_CACHE_KEY)
    if cached is None:
        edge_index = require_edges(ctx, "gcn")
        # Imported here: torch_geometric is slow to import, and only graph models need it.
        from torch_geometric.nn.conv.gcn_conv import gcn_norm

        cached = gcn_norm(edge_index, None, num_nodes, add_self_loops=True)
        ctx.cache[GCN_NORM_CACHE_KEY] = cached
    return cached


@register
class GCNSpec(LayerSpec):
    """A graph convolution (Kipf & Welling) with optional pre-activation and LayerNorm."""

    kind: Literal["gcn"] = "gcn"
    layer_type = LayerType.GCN
    param_types = {"weight": 0, "bias": 1}
    in_features: int = Field(ge=1)
    out_features: int = Field(ge=1)
    bias: bool = True
    activation: Activation = Activation()
    norm: bool = False
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    categorical_domains = GRAPH_DOMAINS

    def output_shape(self, inp: FeatureShape, path: str) -> FeatureShape:
        check_node_input(self.kind, inp, self.in_features, path)
        return FeatureShape("nodes", (self.out_features,), f"{path}.out_features")

    def build_module(self) -> nn.Module:
        return GCNLayer(self)

    def param_meta(self, name: str, shape: tuple[int, ...]) -> ParamMeta:
        if name == "weight":
            glorot_std = math.sqrt(2.0 / (self.in_features + self.out_features))
            return ParamMeta(0, ("output_idx", "input_idx"), 0.0, glorot_std)
        if name == "bias":
            return ParamMeta(1, ("output_idx",), 0.0, 0.0)
        raise KeyError(name)

    def local_fields(self) -> dict[str, float]:
        fields = common_local_fields(bias=self.bias, norm=self.norm, activation=self.activation, dropout=self.dropout)
        fields["output_size"] = self.out_features
        fields["input_size"] = self.in_features
        return fields


class GCNLayer(nn.Module):
    def __init__(self, spec: GCNSpec):
        super().__init__()
        self.spec = spec
        self.weight = nn.Parameter(torch.empty(spec.out_features, spec.in_features))
        if spec.bias:
            self.bias = nn.Parameter(torch.empty(spec.out_features))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # As PyG's GCNConv: Glorot-uniform weight, zero bias.
        nn.init.xavier_uniform_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        spec = self.spec
        x = activate(x, spec.activation)
        if spec.norm:
            x = feature_norm(x)
        x = F.dropout(x, spec.dropout, self.training)
        x = F.linear(x, self.weight)
        edge_index, edge_weight = normalised_edges(ctx, x.shape[0])
        source, target = edge_index
        messages = x.index_select(0, source) * edge_weight.to(x.dtype).unsqueeze(-1)
        out = x.new_zeros(x.shape).index_add_(0, target, messages)
        return out + self.bias if self.bias is not None else out
