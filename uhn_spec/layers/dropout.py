"""Dropout layer: zeroes features with probability ``p`` while training (no parameters)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from . import register
from .base import FeatureShape, ForwardContext, LayerSpec, ParamMeta, common_local_fields


@register
class DropoutSpec(LayerSpec):
    """Dropout as a layer of its own (``nn.Dropout``); an identity at evaluation."""

    kind: Literal["dropout"] = "dropout"
    layer_type = 11
    p: float = Field(0.5, ge=0.0, lt=1.0)

    def output_shape(self, inp: FeatureShape, path: str) -> FeatureShape:
        if inp.kind == "tokens":
            raise self.fail(
                path, f"dropout reads features, got {inp.describe()} from {inp.origin}; put it after the embedding"
            )
        return inp

    def build_module(self) -> nn.Module:
        return DropoutLayer(self)

    def param_meta(self, name: str, shape: tuple[int, ...]) -> ParamMeta:
        raise KeyError(name)  # no parameters

    def local_fields(self) -> dict[str, float]:
        return common_local_fields(dropout=self.p)


class DropoutLayer(nn.Module):
    def __init__(self, spec: DropoutSpec):
        super().__init__()
        self.p = spec.p

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        return F.dropout(x, self.p, self.training)
