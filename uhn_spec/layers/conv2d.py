"""Conv layer: shortcut -> act -> [GroupNorm] -> [2x2 pool] -> conv2d -> dropout -> [+x].

The authors' CNNs are built from these single-conv pre-activation units (one identity shortcut
per conv, not the two-conv ResNet basic block); see specs/_families/cnn.j2.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from ..enums import LayerType, StagePooling
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
    pytorch_uniform_std,
)

StagePoolingName = Literal["none", "avg_pooling", "max_pooling", "conv_pooling"]


@register
class Conv2dSpec(LayerSpec):
    """A 2-d convolution (odd square kernel, 'same' padding) with optional pre-activation,
    parameter-free GroupNorm of its input, 2x2 downsampling and identity shortcut."""

    kind: Literal["conv2d"] = "conv2d"
    layer_type = LayerType.CONV2D
    param_types = {"weight": 0, "bias": 1}
    in_channels: int = Field(ge=1)
    out_channels: int = Field(ge=1)
    kernel_size: int = Field(3, ge=1)
    bias: bool = True
    activation: Activation = Activation()
    norm: bool = False
    groups: int = Field(1, ge=1, description="GroupNorm groups of the input (used when norm is on)")
    shortcut: bool = False
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    stage_pooling: StagePoolingName = "none"

    categorical_domains = {**COMMON_DOMAINS, "stage_wise_pooling_type": (0, 3)}

    @field_validator("kernel_size")
    @classmethod
    def _odd_kernel(cls, value: int) -> int:
        # Padding k//2 keeps the spatial size only for odd kernels.
        if value % 2 == 0:
            raise ValueError(f"must be odd so that padding k//2 keeps the size (got {value}); use {value + 1}")
        return value

    @property
    def stride(self) -> int:
        return 2 if self.stage_pooling == "conv_pooling" else 1

    def _spatial_out(self, height: int, width: int, path: str) -> tuple[int, int]:
        if self.stage_pooling in ("avg_pooling", "max_pooling"):
            if height < 2 or width < 2:
                raise self.fail(
                    f"{path}.stage_pooling",
                    f"{self.stage_pooling} halves the size but the input is only {height}x{width}; use none",
                )
            height, width = height // 2, width // 2
        pad, k, s = self.kernel_size // 2, self.kernel_size, self.stride
        return (height + 2 * pad - k) // s + 1, (width + 2 * pad - k) // s + 1

    def output_shape(self, inp: FeatureShape, path: str) -> FeatureShape:
        if inp.kind != "image":
            raise self.fail(path, f"conv2d needs an image input, got {inp.describe()} from {inp.origin}")
        channels, height, width = inp.dims
        if channels != self.in_channels:
            raise self.fail(f"{path}.in_channels", f"{self.in_channels} does not match {inp.origin} ({channels})")
        if self.norm and self.in_channels % self.groups:
            raise self.fail(
                f"{path}.groups",
                f"{self.groups} GroupNorm groups do not divide in_channels {self.in_channels}; "
                "pick a divisor or set norm: false",
            )
        out_h, out_w = self._spatial_out(height, width, path)
        out = (self.out_channels, out_h, out_w)
        if self.shortcut and out != tuple(inp.dims):
            raise self.fail(
                f"{path}.shortcut",
                f"an identity shortcut needs the output shape to equal the input "
                f"({'x'.join(map(str, inp.dims))} -> {'x'.join(map(str, out))}); set shortcut: false",
            )
        return FeatureShape("image", out, f"{path}.out_channels")

    def build_module(self) -> nn.Module:
        return Conv2dLayer(self)

    def param_meta(self, name: str, shape: tuple[int, ...]) -> ParamMeta:
        # PyTorch's Conv2d default init draws weight and bias from U(+-1/sqrt(fan_in)).
        std = pytorch_uniform_std(self.in_channels * self.kernel_size**2)
        if name == "weight":
            return ParamMeta(0, ("output_idx", "input_idx", "kernel_h_idx", "kernel_w_idx"), 0.0, std)
        if name == "bias":
            return ParamMeta(1, ("output_idx",), 0.0, std)
        raise KeyError(name)

    def local_fields(self) -> dict[str, float]:
        fields = common_local_fields(
            bias=self.bias, norm=self.norm, shortcut=self.shortcut, activation=self.activation, dropout=self.dropout
        )
        fields["output_size"] = self.out_channels
        fields["input_size"] = self.in_channels
        fields["group_num"] = self.groups
        fields["kernel_size"] = self.kernel_size
        fields["stage_wise_pooling_type"] = float(StagePooling[self.stage_pooling.upper()])
        return fields


class Conv2dLayer(nn.Module):
    def __init__(self, spec: Conv2dSpec):
        super().__init__()
        self.spec = spec
        k = spec.kernel_size
        self.weight = nn.Parameter(torch.empty(spec.out_channels, spec.in_channels, k, k))
        if spec.bias:
            self.bias = nn.Parameter(torch.empty(spec.out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.spec.in_channels * self.spec.kernel_size**2)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        spec = self.spec
        shortcut = x
        x = activate(x, spec.activation)
        if spec.norm:
            x = F.group_norm(x, spec.groups)
        if spec.stage_pooling == "avg_pooling":
            x = F.avg_pool2d(x, 2, 2)
        elif spec.stage_pooling == "max_pooling":
            x = F.max_pool2d(x, 2, 2)
        x = F.conv2d(x, self.weight, self.bias, stride=spec.stride, padding=spec.kernel_size // 2)
        x = F.dropout(x, spec.dropout, self.training)
        return x + shortcut if spec.shortcut else x
