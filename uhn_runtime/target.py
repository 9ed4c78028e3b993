"""A plan target placed on a device: cached descriptors, the skeleton, and the glue that
turns a generated flat vector into the target model's forward pass."""

from __future__ import annotations

import torch
from torch.func import functional_call

from uhn_spec.model import TargetModel, build_model
from uhn_spec.plan import TargetPlan

from .generator import UHNGenerator


class DeviceTarget:
    """Structure rows live on the device; the compact index descriptors stay as the plan has
    them (the generator builds and caches their work units). Nothing is rebuilt per step."""

    def __init__(self, target: TargetPlan, device: torch.device | str = "cpu"):
        self.plan = target
        self.device = torch.device(device)
        self.index = target.index  # compact (O(tensors)); the generator caches its layout
        self.structure_rows = target.structure_rows().to(self.device)
        self.model: TargetModel = build_model(target.spec).to(self.device)
        self._slices = [(p.name, p.offset, p.numel, p.shape) for p in target.params]

    @property
    def num_params(self) -> int:
        return self.plan.num_params

    def generate(self, generator: UHNGenerator, chunk_rows: int | None = None) -> torch.Tensor:
        return generator(self.index, self.structure_rows, chunk_rows)

    def index_rows(self) -> torch.Tensor:
        """(N, 10) explicit index rows on the device, built on demand (naive generator)."""
        return self.plan.index_rows().to(self.device)

    def params_from_flat(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-parameter views into the flat vector (no copy; gradients reach ``flat``)."""
        return {name: flat[o : o + n].view(shape) for name, o, n, shape in self._slices}

    def flat_from_model(self) -> torch.Tensor:
        """The skeleton's own weights as one flat vector in plan order."""
        params = dict(self.model.named_parameters())
        return torch.cat([params[name].detach().reshape(-1) for name, *_ in self._slices])

    def forward(self, flat: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, self.params_from_flat(flat), args=(), kwargs=inputs)
