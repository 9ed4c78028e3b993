"""One optimiser step, shared by the init phase, the task phase and direct training:
AdamW without weight decay, mixed precision where the device has it, optional clipping,
and the guard that stops a run on a NaN or inf loss."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch

from uhn_spec.errors import UHNError

PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]


class TrainingDiverged(UHNError):
    """The loss became NaN or inf; the run stops and keeps its last good checkpoint."""


@dataclass(frozen=True)
class Precision:
    """Autocast dtype for matmuls (None: plain fp32). The generator keeps its Fourier phases
    in fp32 whatever this says."""

    device_type: str
    dtype: torch.dtype | None

    @staticmethod
    def resolve(name: PrecisionName, device: torch.device) -> "Precision":
        if device.type != "cuda":
            if name == "fp16":
                raise UHNError("train.precision: fp16 needs a CUDA device; use fp32 or bf16 on the CPU")
            # auto means fp32 on the CPU: CPU bf16 matmuls are rarely faster and lose precision.
            return Precision(device.type, torch.bfloat16 if name == "bf16" else None)
        dtypes = {"auto": torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
        return Precision(device.type, dtypes[name])

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        # Only fp16 needs loss scaling; bf16 has fp32's exponent range.
        return torch.amp.GradScaler(self.device_type, enabled=self.dtype == torch.float16)


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
    """backward -> (unscale, clip) -> step -> zero_grad, with the GradScaler when fp16."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        precision: Precision,
        grad_clip: float | None = None,
    ):
        self.optimizer = optimizer
        self.scaler = precision.grad_scaler()
        self.grad_clip = grad_clip

    def params(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def step(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
