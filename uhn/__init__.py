"""uhn's Python API, for people who train in their own loop.

    hnet = uhn.HyperNetwork.for_module(model, example_inputs)
    out = hnet(x)                      # generates every weight of ``model``, then runs it
    loss.backward()                    # gradients reach the generator only
    model.load_state_dict(hnet.export_state_dict(), strict=True)

The module is captured with torch.export (as ``uhn import`` does) and described with the
paper's descriptors; the generator is uhn's UHN generator. ``state_dict()`` is the generator's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from uhn_runtime.model.generator import UHNGenerator
from uhn_runtime.model.target import DeviceTarget
from uhn_spec import ExperimentSpec, compile_spec
from uhn_spec.errors import UHNError
from uhn_spec.importer import ImportedModel, import_model, module_state_dict
from uhn_spec.spec import GeneratorSpec

__all__ = ["HyperNetwork", "UHNError"]


def describe_inputs(example: torch.Tensor | tuple[torch.Tensor, ...]) -> dict[str, Any]:
    """``import_model``'s input arguments from example inputs: ``(x, edge_index)`` is a graph
    model, anything else one batch of images, vectors or token ids."""
    inputs = example if isinstance(example, tuple) else (example,)
    if len(inputs) == 2 and not inputs[1].is_floating_point() and inputs[1].dim() == 2 and inputs[1].shape[0] == 2:
        return {"graph": "synthetic", "input_shape": (int(inputs[0].shape[1]),)}
    if len(inputs) != 1:
        raise UHNError("example_inputs: one batch tensor, or (x, edge_index) for a graph model")
    return {"input_shape": tuple(int(d) for d in inputs[0].shape[1:])}


class HyperNetwork(nn.Module):
    """A UHN generator for one module: calling it generates the module's weights and runs
    the module with them (``torch.func.functional_call`` of the captured graph)."""

    def __init__(self, spec: ExperimentSpec, imported: ImportedModel, seed: int = 0):
        super().__init__()
        plan = compile_spec(spec)
        self.spec = spec
        self.imported = imported
        self.generator = UHNGenerator(spec.generator, plan.index_ranges, plan.structure_ranges, seed=seed)
        self._target = DeviceTarget(plan.targets[0])  # not a submodule: state_dict() is the generator's

    @classmethod
    def for_module(
        cls,
        model: nn.Module,
        example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
        generator: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> HyperNetwork:
        """Capture ``model`` (called as ``model(*example_inputs)``) and build its generator;
        ``generator`` overrides fields of the generator spec (``index_freqs``, ``hidden``, ...)."""
        imported = import_model(model, **describe_inputs(example_inputs), name=type(model).__name__[:100] or "model")
        spec = ExperimentSpec.model_validate(
            {**imported.spec, "generator": GeneratorSpec(**(generator or {})).model_dump()}
        )
        return cls(spec, imported, seed)

    @property
    def num_params(self) -> int:
        """Weights of the module (the generated vector's length)."""
        return self._target.num_params

    def generate(self) -> torch.Tensor:
        """The module's weights as one flat vector (differentiable in the generator)."""
        return self._target.generate(self.generator)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor | None = None) -> torch.Tensor:
        inputs = {"x": x} if edge_index is None else {"x": x, "edge_index": edge_index}
        return self._target.forward(self.generate(), **inputs)

    @torch.no_grad()
    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """The generated weights (and BatchNorm statistics) under the module's own keys: its
        ``load_state_dict(..., strict=True)`` takes them."""
        flat = self.generate()
        state = {name: tensor.detach().clone() for name, tensor in self._target.params_from_flat(flat).items()}
        state.update({name: buffer.detach().clone() for name, buffer in self._target.model.named_buffers()})
        return module_state_dict(self.imported, state)

    def train(self, mode: bool = True) -> HyperNetwork:
        super().train(mode)
        self._target.model.train(mode)
        return self

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> HyperNetwork:
        super()._apply(fn, recurse)
        target = self._target
        target.model._apply(fn, recurse)
        target.structure_rows = fn(target.structure_rows)
        target.device = target.structure_rows.device
        return self
