"""Export generated weights as a plain ``state_dict`` in safetensors, and load them back.

The file holds the target skeleton's own parameter names (``layers.0.weight`` ...), so the
plain ``nn.Module`` from ``uhn_spec.build_model(spec)`` loads it with ``load_state_dict``;
the spec travels in the file's metadata, so the file alone is enough to rebuild the model.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from uhn_spec.errors import UHNError
from uhn_spec.model import TargetModel, build_model
from uhn_spec.spec import ExperimentSpec

from .checkpoint import load_checkpoint
from .evaluate import generate_weights
from .optim import Precision
from .run_dir import RunDir
from .target import DeviceTarget
from .weights import DirectSource, SourceKind, UHNSource, make_source

EXPORT_FORMAT = "uhn-export"


class ExportError(UHNError):
    """An export file is missing, unreadable or not written by uhn."""


def load_trained_source(
    run: RunDir, kind: SourceKind, device: torch.device
) -> tuple[UHNSource | DirectSource, DeviceTarget, Precision]:
    """The finished weight source of a run phase, ready to generate on ``device``."""
    plan = run.plan()
    path = run.checkpoint_path(kind)
    if not path.is_file():
        raise UHNError(f"{run.root} has no {kind} checkpoint ({path}); the run trained: {run.info().get('mode')}")
    state = load_checkpoint(path, plan.source_hash)
    if not state["finished"]:
        raise UHNError(
            f"{run.root}: the {kind} phase has not finished (checkpoint after {state['units_done']} "
            f"units); continue it with `uhn train --resume {run.root}`"
        )
    target = DeviceTarget(plan.targets[0], device)
    source = make_source(kind, plan, target, plan.targets[0].spec.train.seed)
    source.load_state_dict(state["source"])
    precision = Precision.resolve(plan.targets[0].spec.train.precision, device)
    return source, target, precision


def generated_state_dict(run: RunDir, kind: SourceKind, device: torch.device) -> dict[str, torch.Tensor]:
    source, target, precision = load_trained_source(run, kind, device)
    flat = generate_weights(source, precision)
    # Own storage per tensor: safetensors refuses views that share memory.
    return {name: view.detach().cpu().clone().contiguous() for name, view in target.params_from_flat(flat).items()}


def export_run(run: RunDir, output: Path, kind: SourceKind, device: torch.device) -> dict[str, torch.Tensor]:
    state = generated_state_dict(run, kind, device)
    spec = run.plan().targets[0].spec
    metadata = {"format": EXPORT_FORMAT, "spec_json": spec.model_dump_json(), "source": kind, "run": str(run.root)}
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    try:
        save_file(state, tmp, metadata=metadata)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return state


def load_exported(path: Path, device: torch.device | str = "cpu") -> tuple[ExperimentSpec, TargetModel]:
    """The spec and the plain target module with the exported weights loaded."""
    if not path.is_file():
        raise ExportError(f"export file not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            state = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError) as err:
        raise ExportError(f"{path}: not a readable safetensors file: {err}") from None
    if metadata.get("format") != EXPORT_FORMAT or "spec_json" not in metadata:
        raise ExportError(f"{path}: not written by `uhn export` (no uhn spec in its metadata)")
    spec = ExperimentSpec.model_validate_json(metadata["spec_json"])
    model = build_model(spec)
    model.load_state_dict(state, strict=True)
    return spec, model.to(device)
