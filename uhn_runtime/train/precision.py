"""Mixed precision: which autocast dtype a run uses (``Precision``) and how ``auto`` decides
it from the device's bf16 hardware and the plan's task kinds. A module of its own because the
optimiser step, the step bound, evaluation and export all take a ``Precision``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from uhn_spec.enums import TaskType
from uhn_spec.errors import UHNError

PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]

# What ``auto`` needs of a CPU: bf16 matmul instructions, AMX tiles or AVX512-BF16 alone
# (vdpbf16ps, e.g. AMD Zen 4); docs/performance.md, "bf16", has what each gains.
CPU_AUTO_BF16_FEATURES = ("amx_bf16", "avx512_bf16")

# The other condition of ``auto``: the task kind. Each kind's verdict over 5 seeds per precision
# in benchmarks/results/precision_parity.json (benchmarks/precision_parity.py): bf16 keeps
# accuracy when its seed mean is no worse than the worst fp32 seed, on every spec measured for
# the kind (graph: Cora and CiteSeer). ``auto`` picks bf16 only for a kind that keeps it (a
# plan: only if every target's kind does); a kind measured to cost accuracy, not measured yet,
# or absent here resolves to fp32. tests/runtime/train/test_precision.py checks this table
# against the JSON: change both together.
PARITY_JSON = "benchmarks/results/precision_parity.json"
KEEPS, COSTS, NOT_MEASURED = "keeps accuracy", "costs accuracy", "not measured"
AUTO_BF16_BY_KIND: dict[str, str] = {
    "image": KEEPS,
    "graph": KEEPS,
    "text": NOT_MEASURED,
    "formula": COSTS,
    "recursive": KEEPS,
}
PRECISION_KINDS = tuple(AUTO_BF16_BY_KIND)  # the kinds with a representative spec in the benchmark

# The kind of each task type, as the table and the run's reason name it.
TASK_KINDS: dict[TaskType, str] = {
    TaskType.IMAGE_CLASSIFICATION: "image",
    TaskType.GRAPH_NODE_CLASSIFICATION: "graph",
    TaskType.TEXT_CLASSIFICATION: "text",
    TaskType.FORMULA_REGRESSION: "formula",
    TaskType.RECURSIVE: "recursive",
    TaskType.TABULAR_CLASSIFICATION: "tabular",
}


# oneDNN's instruction-set names, lowest first, for ONEDNN_MAX_CPU_ISA (DNNL_MAX_CPU_ISA before
# oneDNN 2): a cap below the one a feature needs hides it from torch's CPU matmuls, which then
# emulate bf16 (ONEDNN_MAX_CPU_ISA=AVX2 makes a CPU with AVX512-BF16 behave as one without).
ONEDNN_ISA_ORDER = (
    "sse41",
    "avx",
    "avx2",
    "avx2_vnni",
    "avx2_vnni_2",
    "avx512_core",
    "avx512_core_vnni",
    "avx512_core_bf16",
    "avx10_1_512",
    "avx512_core_fp16",
    "avx10_1_512_amx",
    "avx512_core_amx",
    "avx10_1_512_amx_fp16",
    "avx512_core_amx_fp16",
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


def bf16_hardware(device: torch.device) -> tuple[bool, str]:
    """Whether the device accelerates bf16 matmuls, and what it has (or lacks)."""
    if device.type == "cuda":
        return cuda_bf16_tensor_cores(device)
    features = cpu_bf16_features()
    chosen = [f for f in CPU_AUTO_BF16_FEATURES if f in features]
    if chosen:
        return True, f"the CPU has {', '.join(chosen)}: bf16 matmuls run 2-6x fp32's there (docs/performance.md)"
    return False, "the CPU has no bf16 matmul instructions (neither AMX nor AVX512-BF16)"


def kinds_costing_accuracy(kinds: Iterable[TaskType]) -> dict[str, str]:
    """Of ``kinds``, those ``auto`` keeps in fp32, each with its verdict (``AUTO_BF16_BY_KIND``)."""
    names = sorted({TASK_KINDS[kind] for kind in kinds})
    verdicts = {name: AUTO_BF16_BY_KIND.get(name, NOT_MEASURED) for name in names}
    return {name: verdict for name, verdict in verdicts.items() if verdict != KEEPS}


def auto_precision(device: torch.device, kinds: Iterable[TaskType]) -> tuple[torch.dtype | None, str]:
    """What ``auto`` picks for a plan of task ``kinds`` on this device, and why (recorded with
    the run): bf16 where the hardware accelerates it and every kind keeps accuracy in bf16."""
    kinds = frozenset(kinds)
    accelerated, hardware = bf16_hardware(device)
    if not accelerated:
        return None, hardware
    blocked = kinds_costing_accuracy(kinds)
    if blocked:
        verdicts = sorted(set(blocked.values()))
        by_verdict = [f"{v} for {', '.join(k for k in blocked if blocked[k] == v)}" for v in verdicts]
        why = verdicts[0] if len(verdicts) == 1 else "; ".join(by_verdict)
        names = ", ".join(blocked)
        return None, f"fp32 for {names} tasks: bf16 {why} ({PARITY_JSON}); --precision bf16 asks for bf16"
    names = ", ".join(sorted({TASK_KINDS[kind] for kind in kinds}))
    why = f"bf16 for {names} tasks, no accuracy lost ({PARITY_JSON}): {hardware}"
    return torch.bfloat16, f"{why}; --precision fp32 asks for fp32"


@dataclass(frozen=True)
class Precision:
    """Autocast dtype for matmuls (None: plain fp32), and why it was chosen. The generator
    keeps its Fourier phases in float64 and cos/sin in fp32 whatever this says."""

    device_type: str
    dtype: torch.dtype | None
    reason: str = "asked for"

    @staticmethod
    def resolve(name: PrecisionName, device: torch.device, kinds: Iterable[TaskType]) -> Precision:
        """``name`` on ``device`` for a plan whose targets solve task ``kinds`` (``Plan.task_types``):
        ``auto`` by the hardware and the kinds (``auto_precision``), any other name as it says."""
        if name == "auto":
            dtype, why = auto_precision(device, kinds)
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
