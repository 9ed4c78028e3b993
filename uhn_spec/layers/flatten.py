"""Flatten layer: an image or a sequence becomes one vector per example (no parameters)."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from ..enums import InputPooling
from . import register
from .base import FeatureShape, ForwardContext, LayerSpec, ParamMeta


@register
class FlattenSpec(LayerSpec):
    """``torch.flatten(x, 1)``: everything but the batch dimension into one vector."""

    kind: Literal["flatten"] = "flatten"
    layer_type = 10

    def output_shape(self, inp: FeatureShape, path: str) -> FeatureShape:
        if inp.kind in ("tokens", "nodes"):
            raise self.fail(
                path, f"flatten reads an image, a sequence or a vector, got {inp.describe()} from {inp.origin}"
            )
        return FeatureShape("vector", (math.prod(inp.dims),), f"{path} (flatten)")

    def build_module(self) -> nn.Module:
        return FlattenLayer()

    def param_meta(self, name: str, shape: tuple[int, ...]) -> ParamMeta:
        raise KeyError(name)  # no parameters

    def local_fields(self) -> dict[str, float]:
        # Described like a linear layer's reshape_to_2d input step, the same operation.
        return {"input_pooling_reshape_type": float(InputPooling.RESHAPE_TO_2D)}


class FlattenLayer(nn.Module):
    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        return x.flatten(1)
