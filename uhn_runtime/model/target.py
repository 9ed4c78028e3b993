"""A plan target placed on a device: cached descriptors, the skeleton, and the glue that
turns a generated flat vector into the target model's forward pass; and ``TargetCache``,
the bounded set of them a multi-model (family) run keeps."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch.func import functional_call

from uhn_spec.model import TargetModel, build_model
from uhn_spec.plan import Plan, TargetPlan

from .generator import UHNGenerator
from .init_targets import InitTargets

# DeviceTargets a family run keeps at once (least recently used dropped first). Building
# one (skeleton, structure rows; the generator's work-unit layout) costs milliseconds, a
# train step far more, so a miss is cheap; the bound keeps memory flat on 1,000-model
# families (each skeleton holds its own weights: 4 MB for a 1M-parameter CNN).
TARGET_CACHE_SIZE = 64


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
        self._init_targets: InitTargets | None = None

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

    def forward(self, flat: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, self.params_from_flat(flat), args=(), kwargs=inputs)

    def init_targets(self) -> InitTargets:
        """The init phase's per-tensor statistics targets, built on first use."""
        if self._init_targets is None:
            self._init_targets = InitTargets(self.plan, self.device)
        return self._init_targets


class TargetCache:
    """The plan's targets on a device, built on first use and kept (at most ``capacity``,
    least recently used dropped first): a family run switches architecture every step."""

    def __init__(self, plan: Plan, device: torch.device, capacity: int = TARGET_CACHE_SIZE):
        if capacity < 1:
            raise ValueError(f"capacity {capacity} must be >= 1")
        self.plan, self.device, self.capacity = plan, device, capacity
        self._built: OrderedDict[int, DeviceTarget] = OrderedDict()
        self.misses = 0

    def __getitem__(self, index: int) -> DeviceTarget:
        """The plan's ``index``-th target on the device."""
        target = self._built.get(index)
        if target is None:
            self.misses += 1
            # The skeleton's default init draws from the global RNG, which dropout also
            # draws from: building outside it keeps a run's numbers independent of when
            # (and how often) the cache builds a target, so a resumed run stays exact.
            with torch.random.fork_rng(devices=[]):
                target = DeviceTarget(self.plan.targets[index], self.device)
            self._built[index] = target
            if len(self._built) > self.capacity:
                self._built.popitem(last=False)
        else:
            self._built.move_to_end(index)
        return target
