"""Export generated weights as a plain ``state_dict`` in safetensors (or as ONNX), and load them back.

The file holds the target skeleton's own parameter names (``layers.0.weight`` ...), so the
plain ``nn.Module`` from ``uhn_spec.build_model(spec)`` loads it with ``load_state_dict``;
the spec travels in the file's metadata, so the file alone is enough to rebuild the model.
The metadata also carries a SHA-256 of everything else in the file (``CONTENT_CHECKSUM_KEY``:
every other metadata field -- the spec above all -- and every tensor's name, dtype, shape and
bytes), checked on load: a damaged or edited file is refused instead of giving silently wrong
outputs; and the precision the run trained in (run.json's ``precision``: the weights are
generated in it, whatever ``auto`` means on the machine that exports). Exports from before the
content checksum carry only a SHA-256 of the tensors (``CHECKSUM_KEY``), which they are checked
against. A spec whose model would not fit this machine is refused before it is built.

A family run exports any member (``--model``), or zero-shot an architecture that was never
compiled into its plan (``--spec``): the new spec is compiled alone and generated with the
plan's normalisation ranges (the generator's buffers); ``range_excess`` names the descriptor
fields whose values fall outside the family's ranges, where the generator extrapolates.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from uhn_spec.budget import check_spec_fits
from uhn_spec.compiler import compile_target, target_ranges
from uhn_spec.descriptors import INDEX_FIELDS, STRUCTURE_FIELDS, Ranges
from uhn_spec.errors import UHNError
from uhn_spec.files import atomic_write
from uhn_spec.importer import import_for_spec, module_state_dict
from uhn_spec.model import TargetModel, build_model
from uhn_spec.plan import Plan, TargetPlan
from uhn_spec.received import ReceivedFileError, check_file_size, check_recorded_checksum, content_checksum
from uhn_spec.spec import ExperimentSpec, format_validation_error

from ..data import load_task_data
from ..data.synthetic import synthetic_batch
from ..model.batch_norm import DEFAULT_CALIBRATION_BATCHES, batch_norm_layers, recalibrate_batch_norm
from ..model.target import DeviceTarget
from ..model.weights import DirectSource, RecursiveSource, SourceKind, UHNSource, make_source
from ..tensor_checksum import tensors_checksum
from ..train.checkpoint import load_checkpoint
from ..train.evaluate import generate_weights
from ..train.precision import Precision
from ..train.run_dir import RunDir

EXPORT_FORMAT = "uhn-export"
CHECKSUM_KEY = "tensors_sha256"  # the tensors alone: all an export before CONTENT_CHECKSUM_KEY has
CONTENT_CHECKSUM_KEY = "content_sha256"  # every other metadata field and every tensor
# The torch 2.13 ONNX exporter (torch.export based) writes opset 18; the authors' exporter used
# 17, but ONNX's version converter cannot take GAT's scatter-max or ReduceMean down to it.
ONNX_OPSET = 18
ONNX_EXAMPLE_BATCH = 2
ONNX_TOLERANCE = 1e-4  # max |onnxruntime - torch| on the example batch, fp32


class ExportError(UHNError):
    """An export file is missing, unreadable, damaged or does not fit its spec."""


def load_trained_source(
    run: RunDir, kind: SourceKind, device: torch.device, target: TargetPlan | None = None
) -> tuple[UHNSource | RecursiveSource | DirectSource, DeviceTarget, Precision]:
    """The finished weight source of a run phase, ready to generate ``target`` (default:
    the plan's trained target: its first, or a recursive chain's leaf) on ``device``, and the
    precision to generate in: the one the run trained in (``auto`` as resolved at its start)."""
    plan = run.plan()
    target = target or plan.trained_target
    if kind == "direct" and target.name != plan.trained_target.name:
        raise UHNError(
            f"--source direct: the direct weights are {plan.trained_target.name}'s own; "
            "export them without --model/--spec"
        )
    path = run.checkpoint_path(kind)
    if not path.is_file():
        raise UHNError(f"{run.root} has no {kind} checkpoint ({path}); the run trained: {run.info()['mode']}")
    state = load_checkpoint(path, plan.source_hash, kind)
    if not state["finished"]:
        raise UHNError(
            f"{run.root}: the {kind} phase has not finished (checkpoint after {state['units_done']} "
            f"units); continue it with `uhn train --resume {run.root}`"
        )
    on_device = DeviceTarget(target, device)
    source = make_source(kind, plan, on_device, plan.trained_target.spec.train.seed)
    source.load_state_dict(state["source"])
    return source, on_device, run.precision(plan.trained_target.spec.train.precision, device)


def zero_shot_target(plan: Plan, spec: ExperimentSpec) -> tuple[TargetPlan, list[str]]:
    """``spec`` compiled alone, for the plan's generator to generate with the plan's ranges;
    and the descriptor fields where it leaves them (see ``range_excess``)."""
    target = compile_target(spec)
    target.split = "unseen"
    return target, range_excess(plan, target)


def range_excess(plan: Plan, target: TargetPlan) -> list[str]:
    """``"index.output_idx 0..39 (family 0..11)"`` for every descriptor field (``index.`` or
    ``structure.``) whose values in ``target`` fall outside the plan's normalisation range."""
    index, structure = target_ranges(target)
    return _outside("index", INDEX_FIELDS, index, plan.index_ranges) + _outside(
        "structure", STRUCTURE_FIELDS, structure, plan.structure_ranges
    )


def _outside(kind: str, names: tuple[str, ...], mine: Ranges, family: Ranges) -> list[str]:
    found = []
    for i, name in enumerate(names):
        lo, hi, family_lo, family_hi = (float(t[i]) for t in (mine.lo, mine.hi, family.lo, family.hi))
        if lo < family_lo or hi > family_hi:
            value = f"{lo:g}" if lo == hi else f"{lo:g}..{hi:g}"
            found.append(f"{kind}.{name} {value} (family {family_lo:g}..{family_hi:g})")
    return found


def generated_state_dict(
    run: RunDir,
    kind: SourceKind,
    device: torch.device,
    target: TargetPlan | None = None,
    recalibrate_bn: int = DEFAULT_CALIBRATION_BATCHES,
    data_root: str | Path | None = None,
) -> dict[str, torch.Tensor]:
    """The generated parameters of ``target`` (default: the trained target); with BatchNorm
    also its running statistics, recalibrated for these weights over ``recalibrate_bn``
    training batches (0: left at their defaults)."""
    source, on_device, precision = load_trained_source(run, kind, device, target)
    flat = generate_weights(source, precision, on_device)
    state = own_tensors(on_device.params_from_flat(flat))
    if batch_norm_layers(on_device.model):
        if recalibrate_bn > 0:
            data = load_task_data(on_device.plan.spec.task, data_root)
            batches = data.train_batches(on_device.plan.spec.train.batch_size, 0)
            recalibrate_batch_norm(on_device, flat, batches, recalibrate_bn)
        state.update(own_tensors(dict(on_device.model.named_buffers())))
    return state


def own_tensors(views: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Own storage per tensor: safetensors refuses views that share memory."""
    return {name: view.detach().cpu().clone().contiguous() for name, view in views.items()}


def generated_levels(run: RunDir, device: torch.device) -> list[tuple[TargetPlan, dict[str, torch.Tensor]]]:
    """Every level of a recursive run's chain (H1..H_K, then the leaf): target and state dict."""
    source, _, precision = load_trained_source(run, "uhn", device)
    if not isinstance(source, RecursiveSource):
        raise UHNError(f"{run.root}: --levels needs a recursive run (depth >= 1); this run has no generated generators")
    with torch.no_grad(), precision.autocast():
        flats = [flat.float() for flat in source.level_flats()]
    return [(level.plan, own_tensors(level.params_from_flat(flat))) for level, flat in zip(source.levels, flats)]


def export_checksum(state: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """SHA-256 over every metadata field but the content checksum itself and every tensor
    (name, dtype, shape, bytes), each in name order: what the file means, all of it."""
    fields = {key: metadata[key] for key in sorted(metadata) if key != CONTENT_CHECKSUM_KEY}
    return content_checksum({"metadata": fields, "tensors": {name: state[name] for name in sorted(state)}})


def sealed_metadata(state: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, str]:
    """``metadata`` with both checksums: what every export writes."""
    metadata = {**metadata, CHECKSUM_KEY: tensors_checksum(state)}
    return {**metadata, CONTENT_CHECKSUM_KEY: export_checksum(state, metadata)}


def export_run(
    run: RunDir,
    output: Path,
    kind: SourceKind,
    device: torch.device,
    target: TargetPlan | None = None,
    zero_shot: bool = False,
    recalibrate_bn: int = DEFAULT_CALIBRATION_BATCHES,
    data_root: str | Path | None = None,
) -> dict[str, torch.Tensor]:
    """Write ``target``'s (default: the trained target) generated or direct weights to
    ``output``; ``zero_shot``: ``target`` was never compiled into the run's plan."""
    target = target or run.plan().trained_target
    state = generated_state_dict(run, kind, device, target, recalibrate_bn, data_root)
    write_export(output, target, state, kind, run, zero_shot)
    return state


def level_path(output: Path, level: int) -> Path:
    """Where ``--levels`` writes generated generator H_level: beside the leaf's file."""
    return output.with_name(f"{output.stem}.h{level}{output.suffix}")


def export_levels(run: RunDir, output: Path, device: torch.device) -> list[tuple[Path, dict[str, torch.Tensor]]]:
    """The leaf to ``output`` and each generated generator H_k to ``level_path(output, k)``."""
    written = []
    levels = generated_levels(run, device)
    for k, (target, state) in enumerate(levels, start=1):
        path = output if k == len(levels) else level_path(output, k)
        write_export(path, target, state, "uhn", run)
        written.append((path, state))
    return written


def write_export(
    output: Path,
    target: TargetPlan,
    state: dict[str, torch.Tensor],
    kind: SourceKind,
    run: RunDir,
    zero_shot: bool = False,
) -> None:
    spec = target.spec
    metadata = {
        "format": EXPORT_FORMAT,
        "spec_json": spec.model_dump_json(),
        "source": kind,
        "run": str(run.root),
        "model": target.name,
        "zero_shot": "true" if zero_shot else "false",
    }
    recorded = run.info().get("precision")  # what the run trained, and these weights were generated, in
    if recorded is not None:
        metadata["precision"] = recorded
    metadata = sealed_metadata(state, metadata)
    atomic_write(output, lambda tmp: save_file(state, str(tmp), metadata=metadata))


MODULE_EXPORT_FORMAT = "uhn-module-export"


def export_for_module(
    run: RunDir,
    output: Path,
    kind: SourceKind,
    device: torch.device,
    module_ref: str,
    recalibrate_bn: int = DEFAULT_CALIBRATION_BATCHES,
    data_root: str | Path | None = None,
) -> dict[str, torch.Tensor]:
    """The generated weights under the keys of the module the spec was imported from
    (``uhn import``): checked by loading them into a fresh instance with strict=True."""
    spec = run.plan().trained_target.spec
    module, imported = import_for_spec(module_ref, spec)
    state = generated_state_dict(run, kind, device, recalibrate_bn=recalibrate_bn, data_root=data_root)
    module_state = module_state_dict(imported, state)  # contiguous, with the module's version records
    module.load_state_dict(module_state, strict=True)
    metadata = sealed_metadata(
        module_state,
        {"format": MODULE_EXPORT_FORMAT, "module": module_ref, "spec_json": spec.model_dump_json(), "source": kind},
    )
    atomic_write(output, lambda tmp: save_file(module_state, str(tmp), metadata=metadata))
    return module_state


def load_exported(path: Path, device: torch.device | str = "cpu") -> tuple[ExperimentSpec, TargetModel]:
    """The spec and the plain target module with the exported weights loaded; a file that is
    damaged, edited, too large for this machine or does not fit its spec is refused with one
    line naming the file."""
    if not path.is_file():
        raise ExportError(f"export file not found: {path}")
    try:
        check_file_size(path, "uhn export")
    except ReceivedFileError as err:
        raise ExportError(str(err)) from None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            state = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError) as err:
        raise ExportError(f"{path}: not a readable safetensors file: {err}") from None
    if metadata.get("format") != EXPORT_FORMAT or "spec_json" not in metadata:
        raise ExportError(f"{path}: not written by `uhn export` (no uhn spec in its metadata)")
    try:
        spec = ExperimentSpec.model_validate_json(metadata["spec_json"])
    except ValidationError as err:
        raise ExportError(f"{path}: metadata spec_json: {format_validation_error(err)}") from None
    check_spec_fits(spec, f"{path}: metadata spec_json", "compile")
    model = build_model(spec)
    check_tensors_fit(path, state, model)
    check_export_checksums(path, state, metadata)
    model.load_state_dict(state, strict=True)
    return spec, model.to(device)


def check_export_checksums(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """The content checksum where the file has one; an export from before it, its tensors'."""
    fix = "export the run again with `uhn export`"
    if CONTENT_CHECKSUM_KEY in metadata:
        try:
            check_recorded_checksum(path, metadata[CONTENT_CHECKSUM_KEY], export_checksum(state, metadata), fix)
        except ReceivedFileError as err:
            raise ExportError(str(err)) from None
        return
    if CHECKSUM_KEY not in metadata:
        raise ExportError(f"{path}: metadata {CHECKSUM_KEY}: missing; {fix}")
    if tensors_checksum(state) != metadata[CHECKSUM_KEY]:
        raise ExportError(
            f"{path}: metadata {CHECKSUM_KEY}: the tensors do not match their checksum (the file is damaged); {fix}"
        )


def check_tensors_fit(path: Path, state: dict[str, torch.Tensor], model: TargetModel) -> None:
    """Every parameter (and buffer: BatchNorm statistics) of the spec's model is in ``state``
    with its shape, and nothing else is."""
    buffers = dict(model.named_buffers())
    for name, buffer in buffers.items():
        if name not in state or state[name].shape != buffer.shape:
            raise ExportError(
                f"{path}: tensor {name}: missing or of the wrong shape; "
                f"the spec expects a buffer of shape {list(buffer.shape)}"
            )
    expected = {**dict(model.named_parameters())}
    for name, param in expected.items():
        if name not in state:
            raise ExportError(f"{path}: tensor {name}: missing; the spec expects shape {list(param.shape)}")
        tensor = state[name]
        if tensor.shape != param.shape or not tensor.is_floating_point():
            raise ExportError(
                f"{path}: tensor {name}: {tensor.dtype} of shape {list(tensor.shape)}; the spec expects a "
                f"floating-point tensor of shape {list(param.shape)}"
            )
    extra = sorted(set(state) - set(expected) - set(buffers))
    if extra:
        raise ExportError(f"{path}: tensor {extra[0]}: not a parameter of the spec's model ({len(extra)} such tensors)")


# --------------------------------------------------------------------------- ONNX


def export_onnx(model: TargetModel, output: Path) -> float:
    """Write ``model`` as ONNX (input ``input``, plus ``edge_index`` for graphs and
    ``padding_mask`` for text; output ``output``; the batch axis dynamic, for graphs the node
    and edge counts). The file is checked against PyTorch with onnxruntime on an example
    batch before it replaces ``output`` (a failed check leaves ``output`` as it was); returns
    the largest absolute difference of the outputs."""
    try:
        import onnxruntime  # noqa: F401  (checked here so a missing extra fails before exporting)
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError as err:
        raise ExportError(
            f"--onnx needs the onnx extra ({err.name} is not installed): pip install 'uhn[onnx]'"
        ) from None
    spec: ExperimentSpec = model.spec
    model = model.to("cpu").eval()
    kwargs = synthetic_batch(spec.task, ONNX_EXAMPLE_BATCH, torch.device("cpu")).model_kwargs()
    names = {key: "input" if key == "x" else key for key in kwargs}
    program = _onnx_program(model, kwargs, names, spec)
    checked: list[float] = []

    def write_and_check(tmp: Path) -> None:  # a file that fails the check never replaces ``output``
        program.save(str(tmp))
        difference = _onnxruntime_difference(tmp, model, kwargs, names)
        if not difference <= ONNX_TOLERANCE:  # also catches nan
            kept = "the file already there is kept" if output.exists() else "nothing was written"
            raise ExportError(
                f"{output}: the ONNX model's outputs differ from PyTorch's by {difference:.3g} "
                f"(more than {ONNX_TOLERANCE}); {kept}"
            )
        checked.append(difference)

    atomic_write(output, write_and_check)
    return checked[0]


def _dynamic_shapes(kwargs: dict[str, torch.Tensor], spec: ExperimentSpec) -> dict[str, dict[int, object]]:
    if spec.task.info.input_kind == "nodes":  # one whole graph: node and edge counts vary
        return {"x": {0: torch.export.Dim("nodes")}, "edge_index": {1: torch.export.Dim("edges")}}
    batch = torch.export.Dim("batch")
    return {key: {0: batch} for key in kwargs}


def _onnx_program(
    model: TargetModel, kwargs: dict[str, torch.Tensor], names: dict[str, str], spec: ExperimentSpec
) -> Any:
    kinds = sorted({layer.kind for layer in spec.layers})
    registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration_log.level
    try:
        # Quiet: the exporter's warnings, progress lines and notes on absent torchvision ops.
        registration_log.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.onnx.export(
                model,
                (),
                kwargs=kwargs,
                input_names=[names[key] for key in kwargs],
                output_names=["output"],
                opset_version=ONNX_OPSET,
                dynamic_shapes=_dynamic_shapes(kwargs, spec),
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    except Exception as err:  # the exporter raises many kinds; say which model could not export
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(
            f"{spec.name}: ONNX export failed for a model with layer kinds {', '.join(kinds)}: {reason}"
        ) from err
    finally:
        registration_log.setLevel(level)


def _onnxruntime_difference(
    path: Path, model: TargetModel, kwargs: dict[str, torch.Tensor], names: dict[str, str]
) -> float:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (outputs,) = session.run(["output"], {names[key]: value.numpy() for key, value in kwargs.items()})
    with torch.no_grad():
        expected = model(**kwargs)
    difference = (torch.from_numpy(outputs) - expected).abs().max().item()
    return difference if math.isfinite(difference) else math.inf
