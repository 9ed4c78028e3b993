"""Phase checkpoints: written atomically, loaded with ``weights_only=True`` (plain data only).

A checkpoint records a checksum of its whole content (``uhn_spec.received``), checked on load
with the archive's and tensors' bounds: a flipped bit is refused, not trained on. Checkpoints
written before uhn recorded one load as they are.

A checkpoint holds everything a resumed run needs to continue exactly where an
uninterrupted one would be: the weight source (generator or direct weights), the optimiser
and GradScaler, the number of finished epochs/steps, whether the init phase is done, and the
global RNG states (dropout draws from them). The data order is a function of (seed, epoch)
and needs no state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from uhn_spec.errors import UHNError
from uhn_spec.plan import atomic_torch_save
from uhn_spec.received import ReceivedFileError, check_checksum, load_torch_file, with_checksum

from ..model.weights import SourceKind

CHECKPOINT_FORMAT = "uhn-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(UHNError):
    """A checkpoint is missing, corrupt, or belongs to another plan."""


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_torch_save(with_checksum({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}), path)


def load_checkpoint(path: Path, plan_hash: str | None = None, kind: SourceKind | None = None) -> dict[str, Any]:
    """A checkpoint's state, refused with one line when it is not a uhn checkpoint, was written
    for another plan (``plan_hash``) or holds another phase's weights (``kind``: a direct.pt
    copied over uhn.pt)."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = load_torch_file(path, "checkpoint")
    except ReceivedFileError as err:
        raise CheckpointError(str(err)) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a uhn checkpoint (no '{CHECKPOINT_FORMAT}' header)")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {state.get('version')}, this uhn reads {CHECKPOINT_VERSION}"
        )
    if plan_hash is not None and state.get("plan_hash") != plan_hash:
        raise CheckpointError(f"{path}: checkpoint was written for another plan (its source hash differs)")
    if kind is not None and state.get("kind") != kind:
        raise CheckpointError(
            f"{path}: kind: the file holds a {state.get('kind')!r} checkpoint where the {kind!r} phase's "
            f"belongs; put the {kind} checkpoint back, or remove the file to retrain that phase"
        )
    try:
        check_checksum(path, state, "restore it, or remove it to retrain that phase")
    except ReceivedFileError as err:
        raise CheckpointError(str(err)) from None
    return state
