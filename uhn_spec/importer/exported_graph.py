"""``uhn import`` through ``torch.export``: any exportable module becomes one ``exported``
layer (``uhn_spec.layers.exported``): its ATen graph as data plus a descriptor part for
every parameter tensor.

Parts follow the module tree: a module of a paper kind (Linear, Conv2d, norms, Embedding,
MultiheadAttention, PyG GCNConv/GATConv) is that kind's layer; the parameters of any other
module form ``generic`` parts, one tensor per role. Parts are ordered by the graph node that
first reads them. What torch.export cannot capture is one line naming the class, where in
the user's code it stopped, and torch.export's own message.
"""

from __future__ import annotations

import contextlib
import io
import logging
import traceback
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.export import Dim, ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind

from ..graph_ops import encode_value, op_allowed, op_name
from ..layers.exported import ExportedSpec
from .links import Imported, KeyLink, ModuleImportError
from .parts import order_keys, parts_of

# Nodes that only check shapes during capture; the interpreter does not need them.
CHECK_OPS = ("aten._assert_scalar", "aten._assert_tensor_metadata", "aten.sym_constrain_range", "aten._assert_async")


def import_failure(model: nn.Module, err: BaseException) -> ModuleImportError:
    """One line: the class, the last frame of user code torch.export stopped in, its message."""
    frames = [
        f
        for f in traceback.extract_tb(err.__traceback__)
        if "site-packages" not in f.filename and "/torch/" not in f.filename
    ]
    user = next((f for f in reversed(frames) if "uhn_spec" not in f.filename), None)
    where = f" at {user.filename}:{user.lineno} ({user.line})" if user else ""
    message = " ".join(str(err).split())
    if len(message) > 400:
        message = message[:400] + "..."
    return ModuleImportError(
        f"{type(model).__name__}{where}: torch.export cannot capture it: {type(err).__name__}: {message}"
    )


@contextlib.contextmanager
def quiet_torch_logs() -> Iterator[None]:
    """torch.export logs warnings and prints graph dumps while it fails; the user gets one line."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def export_module(model: nn.Module, example: tuple[torch.Tensor, ...], graph: bool) -> ExportedProgram:
    """The module's graph with a symbolic batch (a graph model: symbolic nodes and edges)."""
    if graph:
        dynamic: tuple[dict[int, Any], ...] = ({0: Dim("nodes")}, {1: Dim("edges")})
    else:
        dynamic = ({0: Dim("batch")},)
    try:
        with torch.no_grad(), quiet_torch_logs():
            return torch.export.export(model, example, dynamic_shapes=dynamic, strict=False)
    except Exception as err:  # torch.export reports user-code problems as many exception types
        raise import_failure(model, err) from None


def node_module(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    paths = [path for path, _ in stack.values()]
    return paths[-1] if paths else "the model"


def graph_data(program: ExportedProgram, model: nn.Module) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """The graph as data, and the placeholders of parameters and buffers (-> state keys)."""
    state = model.state_dict(keep_vars=True)
    named_buffers = dict(model.named_buffers())
    inputs: list[str] = []
    params: dict[str, str] = {}
    buffers: dict[str, str] = {}
    constants: dict[str, Any] = {}
    for spec in program.graph_signature.input_specs:
        name = spec.arg.name
        if spec.kind == InputKind.USER_INPUT:
            inputs.append(name)
        elif spec.kind == InputKind.PARAMETER:
            params[name] = spec.target
        elif spec.kind == InputKind.BUFFER:
            buffers[name] = spec.target
            constants[name] = (spec.target if spec.target in state else None, named_buffers[spec.target])
        elif spec.kind == InputKind.CONSTANT_TENSOR:
            constants[name] = (None, program.constants[spec.target])
        else:
            raise ModuleImportError(
                f"{type(model).__name__}: its graph reads a {spec.kind.name} ({spec.target}), which uhn cannot hold"
            )
    params = without_aliases(program, params, state)
    outputs = program.graph_signature.output_specs
    if len(outputs) != 1 or outputs[0].kind != OutputKind.USER_OUTPUT:
        kinds = ", ".join(o.kind.name.lower() for o in outputs)
        raise ModuleImportError(
            f"{type(model).__name__}: the module must return one tensor and change no buffer at evaluation "
            f"(its graph gives: {kinds})"
        )
    nodes = []
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        op = op_name(node.target)
        if op.startswith(CHECK_OPS):
            continue
        if not op_allowed(op):
            raise ModuleImportError(
                f"{node_module(node)}: operator {op} is not among those an imported graph may call "
                "(uhn_spec.graph_ops.ATEN_OPS)"
            )
        try:
            nodes.append(
                {
                    "name": node.name,
                    "op": op,
                    "args": encode_value(list(node.args)),
                    "kwargs": {k: encode_value(v) for k, v in node.kwargs.items()},
                }
            )
        except ValueError as err:
            raise ModuleImportError(f"{node_module(node)}: {op}: {err}") from None
    output = next(n for n in program.graph.nodes if n.op == "output").args[0]
    data = {
        "inputs": inputs,
        "params": params,
        "buffers": {},
        "constants": {},
        "nodes": nodes,
        "output": encode_value(output),
    }
    data["_constants"] = constants
    return data, params, buffers


def without_aliases(program: ExportedProgram, params: dict[str, str], state: dict[str, Any]) -> dict[str, str]:
    """One placeholder per parameter tensor: of a tied tensor's names, the one the graph reads
    (the others come back as ``alias_links``)."""
    used = {node.name for node in program.graph.nodes if node.op == "placeholder" and node.users}
    kept: dict[int, str] = {}
    for placeholder, key in params.items():
        tensor = id(state[key])
        if tensor not in kept or (placeholder in used and kept[tensor] not in used):
            kept[tensor] = placeholder
    chosen = set(kept.values())
    return {p: key for p, key in params.items() if p in chosen}


def constant_data(key: str | None, tensor: torch.Tensor) -> dict[str, Any]:
    tensor = tensor.detach().cpu()
    dtype = str(tensor.dtype).removeprefix("torch.")
    return {
        "key": key,
        "dtype": dtype,
        "shape": list(tensor.shape),
        "values": encode_value(tensor.reshape(-1).tolist()),
    }


# --------------------------------------------------------------------------- parts


def alias_links(model: nn.Module, links: list[KeyLink]) -> list[KeyLink]:
    """Links for the state_dict keys that name a linked tensor a second time (tied weights:
    one parameter under two names, which a strict load wants under both)."""
    state = model.state_dict(keep_vars=True)
    linked = {link.module_key: link for link in links if link.chunk is None}
    first_key = {id(state[key]): key for key in reversed(list(state)) if key in linked}
    return [
        KeyLink(linked[first_key[id(tensor)]].spec_name, key)
        for key, tensor in state.items()
        if key not in linked and id(tensor) in first_key
    ]


def exported_layer(
    model: nn.Module,
    example: tuple[torch.Tensor, ...],
    input_kind: str,
    input_dims: list[int],
    outputs: int,
    sequence_length: int,
) -> tuple[dict[str, Any], list[Imported]]:
    """The ``exported`` layer of ``model`` (graph data inline) and its key links back into it."""
    program = export_module(model, example, input_kind == "nodes")
    data, params, all_buffers = graph_data(program, model)
    parts = [order_keys(p) for p in parts_of(model, program, params, all_buffers, sequence_length)]
    part_keys = {key for part in parts for key in part["keys"].values()}
    constants = data.pop("_constants")
    data["buffers"] = {p: key for p, key in all_buffers.items() if key in part_keys}
    data["constants"] = {
        p: constant_data(key, tensor) for p, (key, tensor) in constants.items() if p not in data["buffers"]
    }
    layer = {
        "kind": "exported",
        "graph": data,
        "input_kind": input_kind,
        "input_dims": input_dims,
        "output_features": outputs,
        "parts": parts,
    }
    ExportedSpec.model_validate(layer)  # a bug, not a user mistake, if it does not validate
    links = [KeyLink(f"parts.{i}.{name}", key) for i, part in enumerate(parts) for name, key in part["keys"].items()]
    chunks: dict[str, int] = {}
    for link in links:  # tensors sharing a key are its blocks along dimension 0
        if sum(1 for other in links if other.module_key == link.module_key) > 1:
            link.chunk = chunks[link.module_key] = chunks.get(link.module_key, -1) + 1
    links += [KeyLink(p, c["key"]) for p, c in data["constants"].items() if c["key"] is not None]
    links += alias_links(model, links)
    return layer, [Imported({"kind": "exported"}, links)]
