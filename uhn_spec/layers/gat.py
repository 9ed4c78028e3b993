"""GAT layer: act -> [LN] -> dropout -> x W^T -> attention over incoming edges -> heads -> + b.

Attention follows Velickovic et al. as the authors run it: scores leaky_relu(0.2) of
a_src.x_j + a_dst.x_i, softmax over the edges into each node i, dropout on the attention
with the layer's own dropout rate. Self-loops are appended WITHOUT first removing those the
graph already has (the authors' choice; PyG's GATConv removes them), so a node with a
self-loop attends to itself twice. On graphs without self-loops the two agree.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..enums import HeadConcat, LayerType
from . import register
from .base import (
    Activation,
    FeatureShape,
    ForwardContext,
    LayerSpec,
    ParamMeta,
    activate,
    common_local_fields,
    feature_norm,
)
from .gcn import GRAPH_DOMAINS, check_node_input, require_edges

ATTENTION_SLOPE = 0.2
GAT_EDGES_CACHE_KEY = "gat_edges"


def edges_with_self_loops(ctx: ForwardContext, num_nodes: int) -> torch.Tensor:
    """The graph's edges plus one self-loop per node, computed once per model forward."""
    cached = ctx.cache.get(GAT_EDGES_CACHE_KEY)
    if cached is None:
        edge_index = require_edges(ctx, "gat")
        loops = torch.arange(num_nodes, device=edge_index.device, dtype=edge_index.dtype)
        cached = torch.cat([edge_index, loops.unsqueeze(0).expand(2, -1)], dim=1)
        ctx.cache[GAT_EDGES_CACHE_KEY] = cached
    return cached


@register
class GATSpec(LayerSpec):
    """A graph attention layer with ``heads`` heads of ``out_features`` each, concatenated
    (output heads*out_features) or averaged (output out_features)."""

    kind: Literal["gat"] = "gat"
    layer_type = LayerType.GAT
    param_types = {"weight": 0, "bias": 1, "att_src": 2, "att_dst": 3}
    in_features: int = Field(ge=1)
    out_features: int = Field(ge=1, description="features per head")
    heads: int = Field(1, ge=1)
    concat: bool = True
    bias: bool = True
    activation: Activation = Activation()
    norm: bool = False
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="feature and attention dropout")

    categorical_domains = {**GRAPH_DOMAINS, "head_concat_type": (0, 1)}

    @property
    def output_features(self) -> int:
        return self.heads * self.out_features if self.concat else self.out_features

    def output_shape(self, inp: FeatureShape, path: str) -> FeatureShape:
        check_node_input(self.kind, inp, self.in_features, path)
        return FeatureShape("nodes", (self.output_features,), f"{path}.out_features")

    def build_module(self) -> nn.Module:
        return GATLayer(self)

    def param_meta(self, name: str, shape: tuple[int, ...]) -> ParamMeta:
        heads, out = self.heads, self.out_features
        if name == "weight":
            return ParamMeta(0, ("output_idx", "input_idx"), 0.0, math.sqrt(2.0 / (self.in_features + heads * out)))
        if name == "bias":
            return ParamMeta(1, ("output_idx",), 0.0, 0.0)
        if name in ("att_src", "att_dst"):
            # (1, heads, out) flattens into output_idx = h*out + c; PyG's glorot on it
            # uses fan_in + fan_out = out + heads.
            param_type = 2 if name == "att_src" else 3
            return ParamMeta(param_type, ("output_idx",) * 3, 0.0, math.sqrt(2.0 / (out + heads)))
        raise KeyError(name)

    def local_fields(self) -> dict[str, float]:
        fields = common_local_fields(bias=self.bias, norm=self.norm, activation=self.activation, dropout=self.dropout)
        fields["output_size"] = self.out_features
        fields["input_size"] = self.in_features
        fields["num_heads"] = self.heads
        fields["head_concat_type"] = float(HeadConcat.CONCAT if self.concat else HeadConcat.AVG)
        return fields


def glorot_(tensor: torch.Tensor) -> None:
    """PyG's glorot: U(+-sqrt(6/(size(-2)+size(-1)))) whatever the tensor's rank."""
    bound = math.sqrt(6.0 / (tensor.size(-2) + tensor.size(-1)))
    nn.init.uniform_(tensor, -bound, bound)


class GATLayer(nn.Module):
    def __init__(self, spec: GATSpec):
        super().__init__()
        self.spec = spec
        heads, out = spec.heads, spec.out_features
        # Registration order is the descriptor's param order: W, b, att_src, att_dst.
        self.weight = nn.Parameter(torch.empty(heads * out, spec.in_features))
        if spec.bias:
            self.bias = nn.Parameter(torch.empty(spec.output_features))
        else:
            self.register_parameter("bias", None)
        self.att_src = nn.Parameter(torch.empty(1, heads, out))
        self.att_dst = nn.Parameter(torch.empty(1, heads, out))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # As PyG's GATConv: Glorot weight and attention vectors, zero bias.
        glorot_(self.weight)
        glorot_(self.att_src)
        glorot_(self.att_dst)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        spec = self.spec
        num_nodes = x.shape[0]
        x = activate(x, spec.activation)
        if spec.norm:
            x = feature_norm(x)
        x = F.dropout(x, spec.dropout, self.training)
        # Attention scores, their softmax over each node's edges and the sum of the messages in
        # fp32: under bf16 autocast the Linear gives bf16, and a softmax over a node's edges is
        # one of the ops autocast users expect in fp32 (a no-op in an fp32 run).
        h = F.linear(x, self.weight).view(num_nodes, spec.heads, spec.out_features).float()
        score_src = (h * self.att_src).sum(dim=-1)  # (nodes, heads)
        score_dst = (h * self.att_dst).sum(dim=-1)
        source, target = edges_with_self_loops(ctx, num_nodes)
        scores = F.leaky_relu(score_src[source] + score_dst[target], ATTENTION_SLOPE)
        from torch_geometric.utils import softmax as edge_softmax  # lazy: slow import

        alpha = edge_softmax(scores, target, num_nodes=num_nodes)  # over edges into each node
        alpha = F.dropout(alpha, spec.dropout, self.training)
        messages = h[source] * alpha.unsqueeze(-1)  # (edges, heads, out)
        out = h.new_zeros(h.shape).index_add_(0, target, messages)
        out = out.reshape(num_nodes, -1) if spec.concat else out.mean(dim=1)
        return out + self.bias if self.bias is not None else out
