"""The one checksum of a set of named tensors: exported weight files and the data cache both
record it in their metadata, so a changed or torn file is noticed when it is read. A module of
its own so that data loading and export share it without importing each other."""

from __future__ import annotations

import hashlib

import torch


def tensors_checksum(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{list(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
