"""The torch device a command runs on, from its --device option (cpu, cuda or auto)."""

from __future__ import annotations

import torch

from uhn_spec.errors import UHNError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UHNError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise UHNError(f"--device: {name!r} is not one of cpu, cuda, auto")
    return torch.device(name)
