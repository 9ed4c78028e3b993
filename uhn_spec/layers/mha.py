"""Multi-head self-attention: shortcut -> act -> [LN] -> attention -> dropout -> [+x]."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..enums import LayerType
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

# param_type ids of the MHA kind, in storage order, as the authors' code numbers them.
MHA_PARAM_TYPES: dict[str, int] = {
    "q_weight": 0,
    "k_weight": 1,
    "v_weight": 2,
    "q_bias": 3,
    "k_bias": 4,
    "v_bias": 5,
    "out_weight": 6,
    "out_bias": 7,
}


@register
class MHASpec(LayerSpec):
    """Self-attention over a (T, dim) sequence with ``heads`` heads, pre-activation and an
    optional parameter-free LayerNorm and identity shortcut. ``dropout`` is used both on the
    attention weights and on the layer output (as the authors do)."""

    kind: Literal["mha"] = "mha"
    layer_type = LayerType.MHA
    param_types = MHA_PARAM_TYPES
    dim: int = Field(ge=1)
    heads: int = Field(ge=1)
    bias: bool = True
    activation: Activation = Activation()
    norm: bool = False
    shortcut: bool = False
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    categorical_domains = dict(COMMON_DOMAINS)
    # q.(k + b_k) shifts every score of a query by the same q.b_k, which softmax removes.
    # The authors (and nn.MultiheadAttention) keep the key bias anyway; so do we, for parity.
    gradient_free_params = frozenset({"k_bias"})

    def output_shape(self, inp: FeatureShape, path: str) -> FeatureShape:
        if inp.kind != "sequence":
            raise self.fail(path, f"attention reads a sequence, got {inp.describe()} from {inp.origin}")
        if inp.features != self.dim:
            raise self.fail(f"{path}.dim", f"{self.dim} does not match {inp.origin} ({inp.features})")
        if self.dim % self.heads:
            raise self.fail(
                f"{path}.heads", f"{self.heads} heads do not divide dim {self.dim}; pick a divisor of {self.dim}"
            )
        return FeatureShape("sequence", inp.dims, f"{path}.dim")

    def build_module(self) -> nn.Module:
        return MHALayer(self)

    def param_meta(self, name: str, shape: tuple[int, ...]) -> ParamMeta:
        param_type = MHA_PARAM_TYPES[name]
        if name.endswith("_bias"):
            return ParamMeta(param_type, ("output_idx",), 0.0, 0.0)
        if name == "out_weight":
            return ParamMeta(param_type, ("output_idx", "input_idx"), 0.0, 1.0 / math.sqrt(3 * self.dim))
        # Q, K and V each target Glorot over their own (d, d) block, sqrt(2 / 2d) = 1/sqrt(d),
        # as the authors' code does; PyTorch's xavier over the stacked (3d, d) in_proj would
        # be sqrt(2 / 4d). Kept for parity.
        return ParamMeta(param_type, ("output_idx", "input_idx"), 0.0, 1.0 / math.sqrt(self.dim))

    def local_fields(self) -> dict[str, float]:
        fields = common_local_fields(
            bias=self.bias, norm=self.norm, shortcut=self.shortcut, activation=self.activation, dropout=self.dropout
        )
        fields["output_size"] = self.dim
        fields["input_size"] = self.dim
        fields["num_heads"] = self.heads
        return fields


class MHALayer(nn.Module):
    # Registered by name in _register_bias; declared here so type checkers know them.
    q_bias: nn.Parameter | None
    k_bias: nn.Parameter | None
    v_bias: nn.Parameter | None
    out_bias: nn.Parameter | None

    def __init__(self, spec: MHASpec):
        super().__init__()
        self.spec = spec
        d = spec.dim
        # Registration order is the storage order: Wq, Wk, Wv, bq, bk, bv, Wo, bo.
        self.q_weight = nn.Parameter(torch.empty(d, d))
        self.k_weight = nn.Parameter(torch.empty(d, d))
        self.v_weight = nn.Parameter(torch.empty(d, d))
        for name in ("q_bias", "k_bias", "v_bias"):
            self._register_bias(name)
        self.out_weight = nn.Parameter(torch.empty(d, d))
        self._register_bias("out_bias")
        self.reset_parameters()

    def _register_bias(self, name: str) -> None:
        param = nn.Parameter(torch.empty(self.spec.dim)) if self.spec.bias else None
        self.register_parameter(name, param)

    def reset_parameters(self) -> None:
        """Draw the init targets of ``param_meta`` (normal with the target std)."""
        d = self.spec.dim
        for weight in (self.q_weight, self.k_weight, self.v_weight):
            nn.init.normal_(weight, 0.0, 1.0 / math.sqrt(d))
        nn.init.normal_(self.out_weight, 0.0, 1.0 / math.sqrt(3 * d))
        for bias in (self.q_bias, self.k_bias, self.v_bias, self.out_bias):
            if bias is not None:
                nn.init.zeros_(bias)

    def _in_proj_bias(self) -> torch.Tensor | None:
        if self.q_bias is None or self.k_bias is None or self.v_bias is None:  # all three or none
            return None
        return torch.cat([self.q_bias, self.k_bias, self.v_bias])

    def attention(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        """Self-attention of x (B, T, d); ``padding_mask`` (B, T) is True at PAD keys."""
        batch, length, d = x.shape
        heads = self.spec.heads
        # One (3d, d) projection instead of three: the stored Q/K/V blocks are joined here.
        in_proj = torch.cat([self.q_weight, self.k_weight, self.v_weight])
        qkv = F.linear(x, in_proj, self._in_proj_bias())
        q, k, v = qkv.view(batch, length, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        # SDPA's boolean mask is True where a key may be attended to.
        mask = None if padding_mask is None else ~padding_mask[:, None, None, :]
        dropout = self.spec.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        out = out.transpose(1, 2).reshape(batch, length, d)
        return F.linear(out, self.out_weight, self.out_bias)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        spec = self.spec
        shortcut = x
        x = activate(x, spec.activation)
        if spec.norm:
            x = feature_norm(x)
        x = self.attention(x, ctx.padding_mask)
        x = F.dropout(x, spec.dropout, self.training)
        return x + shortcut if spec.shortcut else x
