"""Linear layer: [input pooling/reshape] -> shortcut -> act -> [LN] -> linear -> dropout -> [+x]."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..enums import InputPooling, LayerType
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
    pytorch_uniform_std,
)

PoolingName = Literal["none", "avg_pooling", "max_pooling", "reshape_to_2d", "avg_sequence", "first_token"]


@register
class LinearSpec(LayerSpec):
    """A fully connected layer with optional pre-activation, parameter-free LayerNorm,
    identity shortcut and an input pooling/reshape step."""

    kind: Literal["linear"] = "linear"
    layer_type = LayerType.LINEAR
    param_types = {"weight": 0, "bias": 1}
    in_features: int = Field(ge=1)
    out_features: int = Field(ge=1)
    bias: bool = True
    activation: Activation = Activation()
    norm: bool = False
    shortcut: bool = False
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    input_pooling: PoolingName = "none"

    categorical_domains = {**COMMON_DOMAINS, "input_pooling_reshape_type": (0, 5)}

    def _pooled(self, inp: FeatureShape, path: str) -> FeatureShape:
        pooling = self.input_pooling
        if pooling == "none":
            if inp.kind in ("image", "tokens"):
                raise self.fail(
                    f"{path}.input_pooling",
                    f"'none' cannot read {inp.describe()} from {inp.origin}; "
                    "use reshape_to_2d, avg_pooling or max_pooling",
                )
            return inp
        if pooling in ("avg_pooling", "max_pooling"):
            if inp.kind != "image":
                raise self.fail(f"{path}.input_pooling", f"{pooling} needs an image input, got {inp.describe()}")
            return FeatureShape("vector", (inp.dims[0],), inp.origin)
        if pooling == "reshape_to_2d":
            return FeatureShape("vector", (math.prod(inp.dims),), inp.origin)
        if inp.kind != "sequence":
            raise self.fail(f"{path}.input_pooling", f"{pooling} needs a sequence input, got {inp.describe()}")
        return FeatureShape("vector", (inp.dims[-1],), inp.origin)

    def output_shape(self, inp: FeatureShape, path: str) -> FeatureShape:
        pooled = self._pooled(inp, path)
        if pooled.features != self.in_features:
            how = "" if self.input_pooling == "none" else f" after {self.input_pooling}"
            raise self.fail(
                f"{path}.in_features", f"{self.in_features} does not match {inp.origin} ({pooled.features}{how})"
            )
        if self.shortcut and self.in_features != self.out_features:
            raise self.fail(
                f"{path}.shortcut",
                f"an identity shortcut needs in_features == out_features "
                f"(got {self.in_features} -> {self.out_features}); set shortcut: false",
            )
        dims = pooled.dims[:-1] + (self.out_features,)
        return FeatureShape(pooled.kind, dims, f"{path}.out_features")

    def build_module(self) -> nn.Module:
        return LinearLayer(self)

    def param_meta(self, name: str, shape: tuple[int, ...]) -> ParamMeta:
        std = pytorch_uniform_std(self.in_features)
        if name == "weight":
            return ParamMeta(0, ("output_idx", "input_idx"), 0.0, std)
        if name == "bias":
            # The authors' code targets PyTorch's uniform std for biases too.
            return ParamMeta(1, ("output_idx",), 0.0, std)
        raise KeyError(name)

    def local_fields(self) -> dict[str, float]:
        fields = common_local_fields(
            bias=self.bias, norm=self.norm, shortcut=self.shortcut, activation=self.activation, dropout=self.dropout
        )
        fields["output_size"] = self.out_features
        fields["input_size"] = self.in_features
        fields["input_pooling_reshape_type"] = float(InputPooling[self.input_pooling.upper()])
        return fields


class LinearLayer(nn.Module):
    def __init__(self, spec: LinearSpec):
        super().__init__()
        self.spec = spec
        self.weight = nn.Parameter(torch.empty(spec.out_features, spec.in_features))
        if spec.bias:
            self.bias = nn.Parameter(torch.empty(spec.out_features))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.spec.in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        pooling = self.spec.input_pooling
        if pooling == "avg_pooling":
            return x.mean(dim=(-2, -1))
        if pooling == "max_pooling":
            return x.amax(dim=(-2, -1))
        if pooling == "reshape_to_2d":
            return x.flatten(1)
        if pooling == "avg_sequence":
            return x.mean(dim=1)
        if pooling == "first_token":
            return x[:, 0, :]
        return x

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        spec = self.spec
        x = self._pool(x)
        shortcut = x
        x = activate(x, spec.activation)
        if spec.norm:
            x = feature_norm(x)
        x = F.linear(x, self.weight, self.bias)
        x = F.dropout(x, spec.dropout, self.training)
        return x + shortcut if spec.shortcut else x
