"""The descriptor parts of an exported module: which module of a paper kind becomes that
kind's layer, and how every other parameter tensor is grouped into ``generic`` parts by the
role the graph gives it (weight, bias, scale, shift, token, table), in graph order."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.export import ExportedProgram

from ..layers.exported import GENERIC_PARAM_TYPES

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
