"""Pooling layer: max/avg pooling of an image with any kernel, adaptive pooling to a fixed
size, or a sequence pooled to one vector (no parameters)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ..enums import InputPooling, StagePooling
from . import register
from .base import FeatureShape, ForwardContext, LayerSpec, ParamMeta

PoolType = Literal["max", "avg", "adaptive_avg", "adaptive_max", "avg_sequence", "first_token"]

# The descriptor field and id each pooling type is recorded under.
IMAGE_POOL_IDS: dict[str, StagePooling] = {
    "avg": StagePooling.AVG_POOLING,
    "max": StagePooling.MAX_POOLING,
    "adaptive_avg": StagePooling.ADAPTIVE_AVG_POOLING,
    "adaptive_max": StagePooling.ADAPTIVE_MAX_POOLING,
}
SEQUENCE_POOL_IDS: dict[str, InputPooling] = {
    "avg_sequence": InputPooling.AVG_SEQUENCE,
    "first_token": InputPooling.FIRST_TOKEN,
}


@register
class PoolSpec(LayerSpec):
    """``max``/``avg``: ``nn.MaxPool2d``/``nn.AvgPool2d`` (kernel, stride, padding);
    ``adaptive_avg``/``adaptive_max``: to ``output_size`` x ``output_size``;
    ``avg_sequence``/``first_token``: a sequence to one vector (mean, or position 0)."""

    kind: Literal["pool"] = "pool"
    layer_type = 9
    type: PoolType = "max"
    kernel_size: int = Field(2, ge=1)
    stride: int | None = Field(None, ge=1, description="default: kernel_size")
    padding: int = Field(0, ge=0)
    output_size: int = Field(1, ge=1, description="adaptive types: output height and width")

    categorical_domains = {"stage_wise_pooling_type": (0, len(StagePooling) - 1), "input_pooling_reshape_type": (0, 5)}

    @model_validator(mode="after")
    def _padding_fits(self) -> PoolSpec:
        if 2 * self.padding > self.kernel_size:
            raise ValueError(
                f"padding: {self.padding} is more than half the kernel ({self.kernel_size}); "
                f"use at most {self.kernel_size // 2}"
            )
        return self

    def output_shape(self, inp: FeatureShape, path: str) -> FeatureShape:
        if self.type in SEQUENCE_POOL_IDS:
            if inp.kind != "sequence":
                raise self.fail(f"{path}.type", f"{self.type} reads a sequence, got {inp.describe()} from {inp.origin}")
            return FeatureShape("vector", (inp.dims[-1],), f"{path} ({self.type})")
        if inp.kind != "image":
            raise self.fail(
                f"{path}.type", f"{self.type} pooling reads an image, got {inp.describe()} from {inp.origin}"
            )
        channels, height, width = inp.dims
        if self.type.startswith("adaptive"):
            size = self.output_size
            return FeatureShape("image", (channels, size, size), f"{path}.output_size")
        k, s, p = self.kernel_size, self.stride or self.kernel_size, self.padding
        out_h, out_w = (height + 2 * p - k) // s + 1, (width + 2 * p - k) // s + 1
        if out_h < 1 or out_w < 1:
            raise self.fail(
                f"{path}.kernel_size",
                f"{k} is larger than the {height}x{width} input (padding {p}); use a smaller kernel",
            )
        return FeatureShape("image", (channels, out_h, out_w), f"{path} ({self.type} pooling)")

    def build_module(self) -> nn.Module:
        return PoolLayer(self)

    def param_meta(self, name: str, shape: tuple[int, ...]) -> ParamMeta:
        raise KeyError(name)  # no parameters

    def local_fields(self) -> dict[str, float]:
        if self.type in SEQUENCE_POOL_IDS:
            return {"input_pooling_reshape_type": float(SEQUENCE_POOL_IDS[self.type])}
        size = self.output_size if self.type.startswith("adaptive") else self.kernel_size
        return {"stage_wise_pooling_type": float(IMAGE_POOL_IDS[self.type]), "kernel_size": float(size)}


class PoolLayer(nn.Module):
    def __init__(self, spec: PoolSpec):
        super().__init__()
        self.spec = spec

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        spec = self.spec
        if spec.type == "avg_sequence":
            return x.mean(dim=1)
        if spec.type == "first_token":
            return x[:, 0, :]
        if spec.type == "adaptive_avg":
            return F.adaptive_avg_pool2d(x, spec.output_size)
        if spec.type == "adaptive_max":
            return F.adaptive_max_pool2d(x, spec.output_size)
        stride = spec.stride or spec.kernel_size
        if spec.type == "max":
            return F.max_pool2d(x, spec.kernel_size, stride, spec.padding)
        return F.avg_pool2d(x, spec.kernel_size, stride, spec.padding)
