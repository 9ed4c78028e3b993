"""Learned norm layer: LayerNorm, GroupNorm or BatchNorm with a generated weight and bias.

The weight targets 1 and the bias 0 (PyTorch's init). BatchNorm also keeps running
statistics: buffers, never generated; they follow the batches seen in training and are
recalibrated after generation (``uhn_runtime.model.batch_norm``), since generated weights change
every step and the statistics gathered along the way describe none of them.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ..enums import NormType
from . import register
from .base import FeatureShape, ForwardContext, LayerSpec, ParamMeta, common_local_fields

NormName = Literal["layer", "group", "batch"]


@register
class NormSpec(LayerSpec):
    """``layer``: LayerNorm over the last dimension (vector, sequence, nodes); ``group``:
    GroupNorm of an image's channels; ``batch``: BatchNorm of an image's channels (2d) or of
    a vector's / nodes' features (1d)."""

    kind: Literal["norm"] = "norm"
    layer_type = 7
    param_types = {"weight": 0, "bias": 1}
    type: NormName = "layer"
    features: int = Field(ge=1, description="channels of an image, else the last dimension")
    groups: int = Field(1, ge=1, description="group: groups of channels")
    affine: bool = Field(True, description="learned (generated) weight and bias")
    eps: float = Field(1e-5, gt=0, le=1.0)
    momentum: float = Field(0.1, gt=0, le=1.0, description="batch: running-statistics update rate")

    categorical_domains = {"norm_type": (0, len(NormType) - 1), "bias_type": (0, 1)}

    @model_validator(mode="after")
    def _groups_divide(self) -> NormSpec:
        if self.type == "group" and self.features % self.groups:
            raise ValueError(f"groups: {self.groups} does not divide features {self.features}; pick a divisor")
        return self

    def output_shape(self, inp: FeatureShape, path: str) -> FeatureShape:
        allowed = {
            "layer": ("vector", "sequence", "nodes"),
            "group": ("image",),
            "batch": ("image", "vector", "nodes"),
        }[self.type]
        if inp.kind not in allowed:
            raise self.fail(
                f"{path}.type",
                f"a {self.type} norm reads {' or '.join(allowed)}, got {inp.describe()} from {inp.origin}",
            )
        if inp.features != self.features:
            raise self.fail(f"{path}.features", f"{self.features} does not match {inp.origin} ({inp.features})")
        return inp

    def build_module(self) -> nn.Module:
        return NormLayer(self)

    def param_meta(self, name: str, shape: tuple[int, ...]) -> ParamMeta:
        if name == "weight":
            return ParamMeta(0, ("output_idx",), 1.0, 0.0)
        if name == "bias":
            return ParamMeta(1, ("output_idx",), 0.0, 0.0)
        raise KeyError(name)

    def local_fields(self) -> dict[str, float]:
        fields = common_local_fields(bias=self.affine)
        fields["norm_type"] = float(NormType[self.type.upper()])
        fields["output_size"] = self.features
        fields["input_size"] = self.features
        if self.type == "group":
            fields["group_num"] = self.groups
        return fields


class NormLayer(nn.Module):
    # Registered by name below (each only where the norm's type has it); declared for type checkers.
    weight: nn.Parameter | None
    bias: nn.Parameter | None
    running_mean: torch.Tensor
    running_var: torch.Tensor
    num_batches_tracked: torch.Tensor

    def __init__(self, spec: NormSpec):
        super().__init__()
        self.spec = spec
        if spec.affine:
            self.weight = nn.Parameter(torch.ones(spec.features))
            self.bias = nn.Parameter(torch.zeros(spec.features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        # None: a cumulative average over every batch since the last reset (recalibration).
        self.momentum: float | None = spec.momentum
        if spec.type == "batch":
            self.register_buffer("running_mean", torch.zeros(spec.features))
            self.register_buffer("running_var", torch.ones(spec.features))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def reset_running_stats(self) -> None:
        if self.spec.type == "batch":
            self.running_mean.zero_()
            self.running_var.fill_(1.0)
            self.num_batches_tracked.zero_()

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        spec = self.spec
        if spec.type == "layer":
            return F.layer_norm(x, (spec.features,), self.weight, self.bias, spec.eps)
        if spec.type == "group":
            return F.group_norm(x, spec.groups, self.weight, self.bias, spec.eps)
        momentum = self.momentum
        if self.training:
            self.num_batches_tracked.add_(1)
            if momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, self.training, momentum or 0.0, spec.eps
        )
