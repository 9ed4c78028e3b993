"""Activation layer: an elementwise non-linearity as a layer of its own (no parameters).

With it, the usual post-activation order is written in layer order (conv2d -> norm ->
activation) instead of the paper's pre-activation inside each layer.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from ..enums import ActivationType
from . import register
from .base import (
    ACTIVATION_DEFAULT_PARAM,
    Activation,
    ActivationName,
    FeatureShape,
    ForwardContext,
    LayerSpec,
    ParamMeta,
    activate,
    common_local_fields,
)


@register
class ActivationLayerSpec(LayerSpec):
    """``type`` applied to every element: relu, gelu, tanh, sigmoid, silu, leaky_relu, elu."""

    kind: Literal["activation"] = "activation"
    layer_type = 8
    type: ActivationName = "relu"
    param: float = Field(0.0, ge=0.0, le=10.0, description="LeakyReLU slope or ELU alpha (default: PyTorch's)")

    categorical_domains = {"activation_type": (0, len(ActivationType) - 1)}

    @model_validator(mode="before")
    @classmethod
    def _default_param(cls, value: Any) -> Any:
        # As for a pre-activation: an unstated param is PyTorch's default, never 0.
        if isinstance(value, dict) and "param" not in value and isinstance(value.get("type"), str):
            return {**value, "param": ACTIVATION_DEFAULT_PARAM.get(value["type"], 0.0)}
        return value

    @property
    def activation(self) -> Activation:
        return Activation(type=self.type, param=self.param)

    def output_shape(self, inp: FeatureShape, path: str) -> FeatureShape:
        if inp.kind == "tokens":
            raise self.fail(
                path,
                f"an activation reads features, got {inp.describe()} from {inp.origin}; put it after the embedding",
            )
        return inp

    def build_module(self) -> nn.Module:
        return ActivationLayer(self)

    def param_meta(self, name: str, shape: tuple[int, ...]) -> ParamMeta:
        raise KeyError(name)  # no parameters

    def local_fields(self) -> dict[str, float]:
        return common_local_fields(activation=self.activation)


class ActivationLayer(nn.Module):
    def __init__(self, spec: ActivationLayerSpec):
        super().__init__()
        self.spec = spec
        self.activation = spec.activation

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        return activate(x, self.activation)
