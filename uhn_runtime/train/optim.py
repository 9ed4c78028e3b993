"""One optimiser step, shared by the init phase, the task phase and direct training:
AdamW without weight decay, mixed precision where the device has it (``Precision``), optional
clipping, and the guard that stops a run on a NaN or inf loss."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from uhn_spec.errors import UHNError

from .precision import Precision
from .step_bound import LevelChangeBound


class TrainingDiverged(UHNError):
    """The loss became NaN or inf; the run stops and keeps its last good checkpoint."""


def make_adamw(params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.AdamW:
    """AdamW as the authors configure it for both phases: betas (0.9, 0.999), no weight decay."""
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=0.0)


def check_finite(loss_value: float, where: str, last_good: str) -> None:
    if not math.isfinite(loss_value):
        raise TrainingDiverged(
            f"loss became {loss_value} at {where}; stopped, last good checkpoint: {last_good}. "
            "Lower train.lr (or train.init_lr) or set train.grad_clip"
        )


class Stepper:
    """backward -> (unscale, clip) -> step -> zero_grad, with the GradScaler when fp16; the
    step shortened to keep the generated weights' change within ``bound`` where given."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        precision: Precision,
        grad_clip: float | None = None,
        bound: LevelChangeBound | None = None,
    ):
        self.optimizer = optimizer
        self.scaler = precision.grad_scaler()
        self.grad_clip = grad_clip
        self.bound = bound

    def params(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def step(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()
        self.apply()

    def gradients(self, loss: torch.Tensor) -> list[torch.Tensor]:
        """The (scaled) gradient of ``loss`` for every trainable parameter, zeros where it
        does not reach, leaving ``.grad`` alone: one task's gradient for gradient surgery."""
        params = [p for p in self.params() if p.requires_grad]
        grads = torch.autograd.grad(self.scaler.scale(loss), params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]

    def step_on(self, grads: list[torch.Tensor]) -> None:
        """One step on given (scaled) gradients, in the order ``gradients`` returns them."""
        for param, grad in zip([p for p in self.params() if p.requires_grad], grads, strict=True):
            param.grad = grad
        self.apply()

    @property
    def loss_scale(self) -> float:
        """What the gradients are scaled by (fp16's GradScaler; 1 otherwise)."""
        return float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0

    def apply(self) -> None:
        """(unscale, clip) -> step -> zero_grad on the gradients in ``.grad``."""
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params(), self.grad_clip)
        if self.bound is None:
            self.scaler.step(self.optimizer)
        else:
            self.bound.step(lambda: self.scaler.step(self.optimizer))
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
