"""The plain target model: a ``nn.Module`` composed of the spec's layer skeletons.

Its ``named_parameters()`` are the names and shapes the compiler slices the generated vector
into, so a generated model exports as an ordinary ``state_dict`` and loads back into this.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers.base import ForwardContext
from .spec import ExperimentSpec


class TargetModel(nn.Module):
    """Runs the layers in order. Inputs per task type:

    * image / formula: ``model(x)`` with x of shape (B, C, H, W) or (B, F);
    * graph: ``model(x, edge_index=...)`` with x (nodes, F);
    * text: ``model(tokens, padding_mask=...)`` with tokens (B, T), mask True at padding.
    """

    def __init__(self, spec: ExperimentSpec):
        super().__init__()
        self.spec = spec
        self.layers = nn.ModuleList(layer.build_module() for layer in spec.layers)

    def forward(
        self, x: torch.Tensor, edge_index: torch.Tensor | None = None, padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        ctx = ForwardContext(edge_index=edge_index, padding_mask=padding_mask)
        for layer in self.layers:
            x = layer(x, ctx)
        return x


def build_model(spec: ExperimentSpec, device: str | torch.device | None = None) -> TargetModel:
    """Build the skeleton. ``device="meta"`` gives names and shapes without allocating."""
    if device is None:
        return TargetModel(spec)
    with torch.device(device):
        return TargetModel(spec)
