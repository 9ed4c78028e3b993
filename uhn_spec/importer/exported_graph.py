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
import math
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.export import Dim, ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind

from ..graph_ops import encode_value, op_allowed, op_name
from ..layers.exported import GENERIC_PARAM_TYPES, ExportedSpec
from .links import Imported, KeyLink, ModuleImportError

# Nodes that only check shapes during capture; the interpreter does not need them.
CHECK_OPS = ("aten._assert_scalar", "aten._assert_tensor_metadata", "aten.sym_constrain_range", "aten._assert_async")

# Operators looked through when finding a tensor's role (they move or copy it, no more).
VIEW_OPS = frozenset(
    "view reshape expand expand_as permute transpose unsqueeze squeeze contiguous clone t flatten _to_copy to "
    "repeat detach alias unflatten type_as _unsafe_view lift_fresh_copy".split()
)
ROLE_OF_OPERAND: dict[str, dict[int, str]] = {
    **{
        op: {1: "weight", 2: "bias"}
        for op in ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "linear")
    },
    "addmm": {0: "bias", 1: "weight", 2: "weight"},
    **{op: {0: "weight", 1: "weight"} for op in ("mm", "bmm", "matmul")},
    "layer_norm": {2: "scale", 3: "shift"},
    "group_norm": {2: "scale", 3: "shift"},
    "batch_norm": {1: "scale", 2: "shift"},
    "instance_norm": {1: "scale", 2: "shift"},
    **{op: {0: "scale", 1: "scale"} for op in ("mul", "div", "mul_", "div_")},
    **{op: {0: "shift", 1: "shift"} for op in ("add", "sub", "add_", "sub_", "rsub")},
    "embedding": {0: "table"},
    **{op: {2: "weight"} for op in ("lstm", "gru", "rnn_tanh")},
    **{op: {0: "table"} for op in ("index", "index_select", "select", "slice", "gather", "narrow")},
}


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


def square(value: Any) -> int | None:
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    return int(values[0]) if len(set(values)) == 1 else None


def paper_part(m: nn.Module, q: str, sequence_length: int) -> tuple[dict[str, Any], dict[str, str]] | None:
    """The paper kind of module ``m`` at path ``q`` (its layer and tensor -> module keys)."""
    prefix = f"{q}." if q else ""

    def keys(names: dict[str, str]) -> dict[str, str]:
        return {ours: prefix + theirs for ours, theirs in names.items()}

    def has(name: str) -> bool:
        return getattr(m, name, None) is not None

    if isinstance(m, nn.Linear):
        layer = {"kind": "linear", "in_features": m.in_features, "out_features": m.out_features, "bias": has("bias")}
        return layer, keys({"weight": "weight", **({"bias": "bias"} if has("bias") else {})})
    if isinstance(m, nn.Conv2d):
        k = square(m.kernel_size)
        if m.groups != 1 or k is None or k % 2 == 0 or square(m.dilation) != 1:
            return None
        stride = square(m.stride)
        layer = {
            "kind": "conv2d",
            "in_channels": m.in_channels,
            "out_channels": m.out_channels,
            "kernel_size": k,
            "bias": has("bias"),
            "stage_pooling": "none" if stride == 1 else "conv_pooling",
        }
        return layer, keys({"weight": "weight", **({"bias": "bias"} if has("bias") else {})})
    if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.momentum is not None:
        layer = {
            "kind": "norm",
            "type": "batch",
            "features": m.num_features,
            "affine": m.affine,
            "eps": m.eps,
            "momentum": m.momentum,
        }
        stats = {n: n for n in ("running_mean", "running_var", "num_batches_tracked")}
        return layer, keys({**({"weight": "weight", "bias": "bias"} if m.affine else {}), **stats})
    if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1 and (not m.elementwise_affine or has("bias")):
        layer = {
            "kind": "norm",
            "type": "layer",
            "features": m.normalized_shape[0],
            "affine": m.elementwise_affine,
            "eps": m.eps,
        }
        return layer, keys({"weight": "weight", "bias": "bias"} if m.elementwise_affine else {})
    if isinstance(m, nn.GroupNorm):
        layer = {
            "kind": "norm",
            "type": "group",
            "features": m.num_channels,
            "groups": m.num_groups,
            "affine": m.affine,
            "eps": m.eps,
        }
        return layer, keys({"weight": "weight", "bias": "bias"} if m.affine else {})
    if isinstance(m, nn.Embedding):
        layer = {
            "kind": "embedding",
            "num_embeddings": m.num_embeddings,
            "embedding_dim": m.embedding_dim,
            "max_length": max(sequence_length, 1),
            "positions": False,
        }
        return layer, keys({"weight": "weight"})
    if isinstance(m, nn.MultiheadAttention):
        bias = m.in_proj_bias is not None
        if not m._qkv_same_embed_dim or m.bias_k is not None or bias != (m.out_proj.bias is not None):
            return None
        names = {f"{n}_weight": "in_proj_weight" for n in "qkv"}
        if bias:
            names.update({f"{n}_bias": "in_proj_bias" for n in "qkv"})
        names.update({"out_weight": "out_proj.weight", **({"out_bias": "out_proj.bias"} if bias else {})})
        return {
            "kind": "mha",
            "dim": m.embed_dim,
            "heads": m.num_heads,
            "bias": bias,
            "dropout": float(m.dropout),
        }, keys(names)
    if type(m).__module__.startswith("torch_geometric"):
        return pyg_part(m, keys)
    return None


def pyg_part(m: nn.Module, keys: Any) -> tuple[dict[str, Any], dict[str, str]] | None:
    name = type(m).__name__
    bias = {"bias": "bias"} if getattr(m, "bias", None) is not None else {}
    if name == "GCNConv" and m.normalize and m.add_self_loops and not m.improved:
        layer = {"kind": "gcn", "in_features": m.in_channels, "out_features": m.out_channels, "bias": bool(bias)}
        return layer, keys({"weight": "lin.weight", **bias})
    if (
        name == "GATConv"
        and isinstance(m.in_channels, int)
        and m.edge_dim is None
        and getattr(m, "lin", None) is not None
    ):
        layer = {
            "kind": "gat",
            "in_features": m.in_channels,
            "out_features": m.out_channels,
            "heads": m.heads,
            "concat": m.concat,
            "bias": bool(bias),
            "dropout": float(m.dropout),
        }
        return layer, keys({"weight": "lin.weight", **bias, "att_src": "att_src", "att_dst": "att_dst"})
    return None


@dataclass
class Usage:
    """How the graph uses each placeholder: the first node reading it and its role."""

    first: dict[str, int]
    role: dict[str, str]
    groups: dict[str, int]


def usage(program: ExportedProgram) -> Usage:
    order = {node: i for i, node in enumerate(program.graph.nodes)}
    first: dict[str, int] = {}
    role: dict[str, str] = {}
    groups: dict[str, int] = {}
    for node in program.graph.nodes:
        if node.op != "placeholder":
            continue
        users = sorted(node.users, key=order.__getitem__)
        first[node.name] = order[users[0]] if users else len(order)
        role[node.name], groups[node.name] = role_of(node)
    return Usage(first, role, groups)


def role_of(node: torch.fx.Node) -> tuple[str, int]:
    """The role of a placeholder: how the first computing operator reads it (looking through
    views and copies), and the convolution groups when a convolution reads it."""
    value = node
    for _ in range(16):
        users = list(value.users)
        if not users:
            return "other", 1
        user = users[0]
        name = getattr(user.target, "_opname", "")
        if name in VIEW_OPS:
            value = user
            continue
        position = next(
            (i for i, a in enumerate(user.args) if a is value or (isinstance(a, (list, tuple)) and value in a)), -1
        )
        if name in ("cat", "stack"):
            return "token", 1
        found = ROLE_OF_OPERAND.get(name, {}).get(position, "other")
        groups = (
            int(user.args[6]) if name.startswith("conv") and len(user.args) > 6 and isinstance(user.args[6], int) else 1
        )
        return found, groups
    return "other", 1


def init_stats(tensor: torch.Tensor) -> tuple[float, float]:
    values = tensor.detach().double()
    mean = float(values.mean()) if values.numel() else 0.0
    std = float(values.std(unbiased=False)) if values.numel() > 1 else 0.0
    return float(f"{mean:.6g}") if math.isfinite(mean) else 0.0, float(f"{std:.6g}") if math.isfinite(std) else 0.0


def parts_of(
    model: nn.Module, program: ExportedProgram, params: dict[str, str], buffers: dict[str, str], sequence_length: int
) -> list[dict[str, Any]]:
    """Every parameter (and BatchNorm statistic) in a part, parts in graph order."""
    use = usage(program)
    placeholder_of = {key: p for p, key in {**params, **buffers}.items()}
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    parts: list[tuple[int, dict[str, Any]]] = []
    claimed: set[str] = set()
    for path, module in model.named_modules():
        if any(path == c or path.startswith(c + ".") for c in claimed):
            continue
        found = paper_part(module, path, sequence_length)
        if found is None:
            continue
        layer, keys = found
        if any(key not in placeholder_of for key in keys.values()):
            continue  # a tensor the graph does not read (or a tied one): described generically
        claimed.add(path)
        first = min(use.first[placeholder_of[key]] for key in keys.values())
        parts.append((first, {"layer": layer, "keys": keys}))
    claimed_keys = {key for _, part in parts for key in part["keys"].values()}
    generic: dict[str, list[str]] = {}
    for placeholder, key in params.items():
        if key not in claimed_keys:
            owner = key.rsplit(".", 1)[0] if "." in key else key  # a free parameter of the model: its own part
            generic.setdefault(owner, []).append(placeholder)
    for owner, placeholders in generic.items():
        by_role: list[dict[str, str]] = []
        for placeholder in placeholders:
            role = use.role[placeholder]
            slot = next((s for s in by_role if role not in s), None)
            if slot is None:
                by_role.append(slot := {})
            slot[role] = placeholder
        for slot in by_role:
            module = owner if owner in dict(model.named_modules()) else ""
            described = {}
            for role, placeholder in slot.items():
                tensor = tensors[params[placeholder]]
                mean, std = init_stats(tensor)
                described[role] = {"shape": list(tensor.shape), "init_mean": mean, "init_std": std}
            groups = max(use.groups[p] for p in slot.values())
            layer = {"kind": "generic", "module": module, "tensors": described, "groups": groups}
            first = min(use.first[p] for p in slot.values())
            parts.append((first, {"layer": layer, "keys": {role: params[p] for role, p in slot.items()}}))
    parts.sort(key=lambda item: item[0])
    return [part for _, part in parts]


def order_keys(part: dict[str, Any]) -> dict[str, Any]:
    """A generic part's keys in its tensors' (role) order, as its module registers them."""
    if part["layer"]["kind"] != "generic":
        return part
    keys = part["keys"]
    return {**part, "keys": {role: keys[role] for role in sorted(keys, key=GENERIC_PARAM_TYPES.__getitem__)}}


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
