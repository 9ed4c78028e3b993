"""KAN layer: act(x) @ base_W^T + base_b + B-splines(x) @ (spline_W * spline_scale)^T.

Every grid is learned per input: ``lb + exp(length) * cumsum(softmax(knots))`` gives
G + 2k + 1 increasing points, over which Cox–de Boor builds G + k B-spline bases of
order k (the efficient-KAN recursion).

At the init targets (lb -1, length ln 2, knots 0) the grid points are -1 + 2(i+1)/(G+2k+1),
so the grid spans (-1 + 2/(G+2k+1), 1] -- (-0.833, 1] for G=5, k=3 -- as in the authors'
code; kept for parity of the generated parameters.
The first layer of the paper's KAN has no base activation (``activation: none``).
"""

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
    pytorch_uniform_std,
)

GRID_LOWER_BOUND = -1.0
GRID_LOG_LENGTH = math.log(2.0)  # exp(.) = 2: the grid ends at lb + 2 = 1
SPLINE_WEIGHT_STD = 0.1
# Smallest knot spacing used as a Cox–de Boor denominator: softmax of extreme generated
# logits can underflow to equal neighbouring knots, and 0/0 would poison the whole output.
MIN_KNOT_SPACING = 1e-12


@register
class KANSpec(LayerSpec):
    """A Kolmogorov–Arnold layer with learned per-input B-spline grids."""

    kind: Literal["kan"] = "kan"
    layer_type = LayerType.KAN
    param_types = {
        "base_weight": 0,
        "base_bias": 1,
        "spline_weight": 2,
        "spline_scale": 3,
        "grid_lower_bound": 4,
        "grid_length": 5,
        "grid_knots": 6,
    }
    in_features: int = Field(ge=1)
    out_features: int = Field(ge=1)
    grid_size: int = Field(5, ge=1, description="G: grid intervals")
    # Order 0 (piecewise constant) would give the grid parameters no gradient at all.
    spline_order: int = Field(3, ge=1, description="k: B-spline order (3 = cubic)")
    bias: bool = True
    activation: Activation = Activation()

    categorical_domains = {
        "bias_type": COMMON_DOMAINS["bias_type"],
        "activation_type": COMMON_DOMAINS["activation_type"],
    }

    @property
    def num_bases(self) -> int:
        return self.grid_size + self.spline_order

    @property
    def num_grid_points(self) -> int:
        return self.grid_size + 2 * self.spline_order + 1

    def output_shape(self, inp: FeatureShape, path: str) -> FeatureShape:
        if inp.kind != "vector":
            raise self.fail(path, f"a KAN layer reads a vector, got {inp.describe()} from {inp.origin}")
        if inp.features != self.in_features:
            raise self.fail(f"{path}.in_features", f"{self.in_features} does not match {inp.origin} ({inp.features})")
        return FeatureShape("vector", (self.out_features,), f"{path}.out_features")

    def build_module(self) -> nn.Module:
        return KANLayer(self)

    def param_meta(self, name: str, shape: tuple[int, ...]) -> ParamMeta:
        uniform_std = pytorch_uniform_std(self.in_features)
        if name == "base_weight":
            return ParamMeta(0, ("output_idx", "input_idx"), 0.0, uniform_std)
        if name == "base_bias":
            return ParamMeta(1, ("output_idx",), 0.0, 0.0)
        if name == "spline_weight":
            return ParamMeta(2, ("output_idx", "input_idx", "grid_idx"), 0.0, SPLINE_WEIGHT_STD)
        if name == "spline_scale":
            return ParamMeta(3, ("output_idx", "input_idx"), 0.0, uniform_std)
        if name == "grid_lower_bound":
            return ParamMeta(4, ("input_idx",), GRID_LOWER_BOUND, 0.0)
        if name == "grid_length":
            return ParamMeta(5, ("input_idx",), GRID_LOG_LENGTH, 0.0)
        if name == "grid_knots":
            return ParamMeta(6, ("input_idx", "grid_idx"), 0.0, 0.0)
        raise KeyError(name)

    def local_fields(self) -> dict[str, float]:
        fields = common_local_fields(bias=self.bias, activation=self.activation)
        fields["output_size"] = self.out_features
        fields["input_size"] = self.in_features
        fields["grid_size"] = self.grid_size
        fields["spline_order"] = self.spline_order
        return fields


def kan_grid(lower_bound: torch.Tensor, log_length: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
    """(in,), (in,), (in, P) -> (in, P) increasing grid points per input."""
    steps = torch.cumsum(torch.softmax(knots, dim=-1), dim=-1)
    return lower_bound[:, None] + torch.exp(log_length)[:, None] * steps


def b_spline_bases(x: torch.Tensor, grid: torch.Tensor, order: int) -> torch.Tensor:
    """Cox–de Boor: x (B, in), grid (in, P) -> (B, in, P - 1 - order) bases of ``order``.

    Order 0 is the indicator of each half-open grid interval; each higher order blends
    two neighbouring bases of the order below with linear ramps.
    """
    x = x.unsqueeze(-1)
    bases = ((x >= grid[:, :-1]) & (x < grid[:, 1:])).to(x.dtype)
    for k in range(1, order + 1):
        left_span = (grid[:, k:-1] - grid[:, : -(k + 1)]).clamp_min(MIN_KNOT_SPACING)
        right_span = (grid[:, k + 1 :] - grid[:, 1:-k]).clamp_min(MIN_KNOT_SPACING)
        rising = (x - grid[:, : -(k + 1)]) / left_span * bases[..., :-1]
        falling = (grid[:, k + 1 :] - x) / right_span * bases[..., 1:]
        bases = rising + falling
    return bases


class KANLayer(nn.Module):
    def __init__(self, spec: KANSpec):
        super().__init__()
        self.spec = spec
        n_out, n_in = spec.out_features, spec.in_features
        # Registration order is the storage order, as in the authors' KAN layer.
        self.base_weight = nn.Parameter(torch.empty(n_out, n_in))
        if spec.bias:
            self.base_bias = nn.Parameter(torch.empty(n_out))
        else:
            self.register_parameter("base_bias", None)
        self.spline_weight = nn.Parameter(torch.empty(n_out, n_in, spec.num_bases))
        self.spline_scale = nn.Parameter(torch.empty(n_out, n_in))
        self.grid_lower_bound = nn.Parameter(torch.empty(n_in))
        self.grid_length = nn.Parameter(torch.empty(n_in))
        self.grid_knots = nn.Parameter(torch.empty(n_in, spec.num_grid_points))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Start at the init targets of ``param_meta``, so direct training and the
        generated model begin from the same distribution."""
        bound = 1.0 / math.sqrt(self.spec.in_features)
        nn.init.uniform_(self.base_weight, -bound, bound)
        if self.base_bias is not None:
            nn.init.zeros_(self.base_bias)
        nn.init.normal_(self.spline_weight, 0.0, SPLINE_WEIGHT_STD)
        nn.init.uniform_(self.spline_scale, -bound, bound)
        nn.init.constant_(self.grid_lower_bound, GRID_LOWER_BOUND)
        nn.init.constant_(self.grid_length, GRID_LOG_LENGTH)
        nn.init.zeros_(self.grid_knots)

    def grid(self) -> torch.Tensor:
        return kan_grid(self.grid_lower_bound, self.grid_length, self.grid_knots)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        spec = self.spec
        base = F.linear(activate(x, spec.activation), self.base_weight, self.base_bias)
        bases = b_spline_bases(x, self.grid(), spec.spline_order)  # (B, in, G+k)
        scaled = self.spline_weight * self.spline_scale.unsqueeze(-1)  # (out, in, G+k)
        spline = F.linear(bases.flatten(1), scaled.flatten(1))
        return base + spline
