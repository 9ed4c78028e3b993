"""One optimiser step, shared by the init phase, the task phase and direct training:
AdamW without weight decay, mixed precision where the device has it, optional clipping,
and the guard that stops a run on a NaN or inf loss."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from uhn_spec.errors import UHNError

if TYPE_CHECKING:
    from .step_bound import LevelChangeBound

PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]


class TrainingDiverged(UHNError):
    """The loss became NaN or inf; the run stops and keeps its last good checkpoint."""


# What ``auto`` picks on a CPU, by its bf16 matmul instructions. AMX tiles run bf16 matmuls
# ~5.6x fp32 (issue 17's Xeon); AVX512-BF16 alone (vdpbf16ps, e.g. AMD Zen 4) ~2.2x, and bf16
# generation ~1.8x fp32's there. On both, bf16 loses no accuracy beyond seed noise
# (docs/performance.md, "bf16": five seeds per precision of the digits demo).
CPU_AUTO_BF16_FEATURES = ("amx_bf16", "avx512_bf16")


# oneDNN's instruction-set names, lowest first, for ONEDNN_MAX_CPU_ISA (DNNL_MAX_CPU_ISA before
# oneDNN 2): a cap below the one a feature needs hides it from torch's CPU matmuls, which then
# emulate bf16 (ONEDNN_MAX_CPU_ISA=AVX2 makes a CPU with AVX512-BF16 behave as one without).
ONEDNN_ISA_ORDER = (
    "sse41", "avx", "avx2", "avx2_vnni", "avx2_vnni_2", "avx512_core", "avx512_core_vnni",
    "avx512_core_bf16", "avx10_1_512", "avx512_core_fp16", "avx10_1_512_amx", "avx512_core_amx",
    "avx10_1_512_amx_fp16", "avx512_core_amx_fp16",
)
ONEDNN_ISA_OF_FEATURE = {"avx512_bf16": "avx512_core_bf16", "amx_bf16": "avx512_core_amx"}


def cpu_bf16_features() -> frozenset[str]:
    """The CPU's bf16 matmul instructions that torch's matmuls may use, as /proc/cpuinfo names
    them (``amx_bf16``, ``avx512_bf16``): from torch's own detection and from the kernel's
    flags where readable, less those that ONEDNN_MAX_CPU_ISA hides from oneDNN."""
    found = set()
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        found.add("amx_bf16")
    if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        found.add("avx512_bf16")
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        if line.startswith("flags"):
            found.update(f for f in line.split(":", 1)[1].split() if f in ONEDNN_ISA_OF_FEATURE)
            break
    return frozenset(f for f in found if not hidden_by_onednn_cap(f))


def hidden_by_onednn_cap(feature: str) -> bool:
    """Whether ONEDNN_MAX_CPU_ISA (or DNNL_MAX_CPU_ISA) caps oneDNN below ``feature``'s
    instruction set; an unknown or absent cap (oneDNN's default: all) hides nothing."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().lower()
    if cap not in ONEDNN_ISA_ORDER:
        return False
    return ONEDNN_ISA_ORDER.index(cap) < ONEDNN_ISA_ORDER.index(ONEDNN_ISA_OF_FEATURE[feature])


def cuda_bf16_tensor_cores(device: torch.device) -> tuple[bool, str]:
    """Whether the GPU has bf16 tensor cores (compute capability 8.0, Ampere, or later)."""
    major, minor = torch.cuda.get_device_capability(device)
    name = torch.cuda.get_device_name(device)
    if (major, minor) >= (8, 0) and torch.cuda.is_bf16_supported():
        return True, f"{name} has bf16 tensor cores (compute capability {major}.{minor})"
    return False, f"{name} has no bf16 tensor cores (compute capability {major}.{minor} < 8.0)"


def auto_precision(device: torch.device) -> tuple[torch.dtype | None, str]:
    """What ``auto`` picks on this device, and why (recorded with the run)."""
    if device.type == "cuda":
        accelerated, why = cuda_bf16_tensor_cores(device)
        return (torch.bfloat16 if accelerated else None), why
    features = cpu_bf16_features()
    chosen = [f for f in CPU_AUTO_BF16_FEATURES if f in features]
    if chosen:
        return torch.bfloat16, (
            f"the CPU has {', '.join(chosen)}: bf16 matmuls run 2-6x fp32's there, accuracy within seed "
            "noise (docs/performance.md); --precision fp32 asks for fp32"
        )
    return None, "the CPU has no bf16 matmul instructions (neither AMX nor AVX512-BF16)"


@dataclass(frozen=True)
class Precision:
    """Autocast dtype for matmuls (None: plain fp32), and why it was chosen. The generator
    keeps its Fourier phases in float64 and cos/sin in fp32 whatever this says."""

    device_type: str
    dtype: torch.dtype | None
    reason: str = "asked for"

    @staticmethod
    def resolve(name: PrecisionName, device: torch.device) -> "Precision":
        if name == "auto":
            dtype, why = auto_precision(device)
            return Precision(device.type, dtype, f"auto: {why}")
        if name == "fp16" and device.type != "cuda":
            raise UHNError("train.precision: fp16 needs a CUDA device; use fp32 or bf16 on the CPU")
        dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
        return Precision(device.type, dtypes[name], f"{name}: as the spec or --precision asks")

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
