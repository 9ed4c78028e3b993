"""The target's forward with activation checkpointing by segments of layers.

A deep target at a large batch keeps more activations than its generator does: CIFAR CNN-56
at batch 256 keeps about 1.75 GB. Run in K segments, the forward keeps only each segment's
input and recomputes one segment at a time in the backward: about 1/K of the activations
for one extra target forward. Same numbers as ``DeviceTarget.forward``.
"""

from __future__ import annotations

import torch
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from uhn_spec.layers.base import ForwardContext

from .target import DeviceTarget


def segment_bounds(num_layers: int, segments: int) -> list[tuple[int, int]]:
    """``segments`` contiguous, near-equal ranges of layer indices (fewer if there are
    fewer layers)."""
    segments = max(1, min(segments, num_layers))
    edges = [round(i * num_layers / segments) for i in range(segments + 1)]
    return [(lo, hi) for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo]


def forward_in_segments(
    target: DeviceTarget, flat: torch.Tensor, segments: int, **inputs: torch.Tensor
) -> torch.Tensor:
    """``target.forward(flat, **inputs)``, checkpointed in ``segments`` segments (with
    gradients enabled; a plain forward otherwise or for ``segments <= 1``)."""
    if segments <= 1 or not torch.is_grad_enabled():
        return target.forward(flat, **inputs)
    layer_params: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in target.params_from_flat(flat).items():
        _, index, local = name.split(".", 2)  # "layers.<i>.<param>"
        layer_params.setdefault(int(index), {})[local] = tensor
    ctx = ForwardContext(edge_index=inputs.get("edge_index"), padding_mask=inputs.get("padding_mask"))
    layers = target.model.layers

    def run(x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        for i in range(lo, hi):
            x = functional_call(layers[i], layer_params.get(i, {}), args=(x, ctx))
        return x

    x = inputs["x"]
    for lo, hi in segment_bounds(len(layers), segments):
        x = checkpoint(run, x, lo, hi, use_reentrant=False)
    return x
