"""Tracing for ``uhn import``: torch.fx walks the module with every supported module as a
leaf, and each node becomes imported layers (residual additions become blocks).
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from .converters import (
    NEAREST,
    SUPPORTED,
    Imported,
    TraceState,
    activation_layer,
    block,
    converter_of,
    unsupported,
)

# --------------------------------------------------------------------------- tracing


class LeafTracer(torch.fx.Tracer):
    """Stops at every supported module (and, as fx does, at every other torch.nn module)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return converter_of(m) is not None or super().is_leaf_module(m, module_qualified_name)


FUNCTION_ACTIVATIONS: dict[Any, str] = {
    F.relu: "relu",
    torch.relu: "relu",
    F.gelu: "gelu",
    torch.tanh: "tanh",
    F.tanh: "tanh",
    torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid",
    F.silu: "silu",
}
METHOD_ACTIVATIONS = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}
ADDITIONS = (operator.add, operator.iadd, torch.add)


def shape_of(node: torch.fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def node_place(node: torch.fx.Node) -> str:
    stack = node.meta.get("stack_trace") or ""
    return f"{node.op} {node.target}" + (f" ({stack.strip().splitlines()[-2].strip()})" if stack.count("\n") > 1 else "")


def common_prefix(a: list[Imported], b: list[Imported]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] is b[n]:
        n += 1
    return n


def trace_layers(model: nn.Module, example: tuple[torch.Tensor, ...], state: TraceState) -> list[Imported]:
    """The module's graph as a list of imported layers (blocks for residual additions)."""
    graph = LeafTracer().trace(model)
    gm = torch.fx.GraphModule(model, graph)
    ShapeProp(gm).propagate(*example)
    paths: dict[torch.fx.Node, list[Imported]] = {}  # tensor node -> the layers that make it
    context: set[torch.fx.Node] = set()  # graph edges and other non-feature inputs
    modules = dict(model.named_modules())
    output: list[Imported] | None = None
    for node in graph.nodes:
        tracked = [a for a in node.all_input_nodes if a in paths]
        if node.op == "placeholder":
            if not paths:
                paths[node] = []
            else:
                context.add(node)
            continue
        if node.op == "output":
            result = node.args[0]
            if not isinstance(result, torch.fx.Node) or result not in paths:
                raise unsupported("an output that is not one tensor", "", "return the logits tensor")
            output = paths[result]
            continue
        if not tracked:
            continue  # sizes, constants, attributes: not features
        if node.op == "call_function" and node.target in ADDITIONS and len(tracked) == 2:
            a, b = paths[tracked[0]], paths[tracked[1]]
            n = common_prefix(a, b)
            rest_a, rest_b = a[n:], b[n:]
            main, shortcut = (rest_a, rest_b) if len(rest_a) >= len(rest_b) else (rest_b, rest_a)
            if not main:
                raise unsupported("x + x", node_place(node), "a residual x + f(x)")
            paths[node] = a[:n] + [block(main, shortcut)]
            continue
        if len(tracked) != 1:
            raise unsupported(f"{node.target} of two feature tensors", node_place(node), "a chain of layers with residual additions")
        source = paths[tracked[0]]
        if node.args and node.args[0] is not tracked[0] and node.target is not operator.getitem:
            raise unsupported(f"{node.target} whose first argument is not the features", node_place(node), "layer(x)")
        paths[node] = with_gat_dropout_folded(source, convert_node(node, tracked[0], modules, state), str(node.target))
    if output is None:
        raise unsupported("a graph without output", "", "a module returning a tensor")
    return output


def with_gat_dropout_folded(source: list[Imported], converted: list[Imported], where: str) -> list[Imported]:
    """``source`` followed by ``converted``, where a gat layer absorbs the dropout before it.

    The spec's ``gat`` drops its input features and its attention at one rate (the authors'
    layer); PyG's ``GATConv(dropout=p)`` drops only attention, and models put ``F.dropout(x, p)``
    before it. That pair is one spec layer; a GATConv with attention dropout and no dropout of
    its rate just before it has no spec form (training would drop features it does not)."""
    if not converted or converted[0].layer["kind"] != "gat" or converted[0].layer["dropout"] == 0:
        return source + converted
    rate = converted[0].layer["dropout"]
    before = source[-1].layer if source else {}
    if before.get("kind") != "dropout" or before["p"] != rate:
        raise unsupported(
            f"GATConv(dropout={rate}) without F.dropout(x, p={rate}) just before it",
            where,
            f"F.dropout(x, p={rate}) then GATConv(..., dropout={rate}) (the spec's gat drops features and attention at one rate), or GATConv(dropout=0)",
        )
    return source[:-1] + converted


def convert_node(node: torch.fx.Node, source: torch.fx.Node, modules: dict[str, nn.Module], state: TraceState) -> list[Imported]:
    where = node_place(node)
    if node.op == "call_module":
        module = modules[str(node.target)]
        convert = converter_of(module)
        if convert is None:
            name = type(module).__name__
            raise unsupported(name, str(node.target), NEAREST.get(name, SUPPORTED))
        return convert(module, str(node.target), state)
    target = node.target
    before, after = shape_of(source), shape_of(node)
    if node.op == "call_function" and target in FUNCTION_ACTIVATIONS:
        if target is F.gelu and node.kwargs.get("approximate", "none") != "none":
            raise unsupported("gelu(approximate='tanh')", where, "F.gelu(x)")
        return [activation_layer(FUNCTION_ACTIVATIONS[target])]
    if node.op == "call_method" and target in METHOD_ACTIVATIONS:
        return [activation_layer(METHOD_ACTIVATIONS[str(target)])]
    if node.op == "call_function" and target is F.leaky_relu:
        return [activation_layer("leaky_relu", node.kwargs.get("negative_slope", node.args[1] if len(node.args) > 1 else 0.01))]
    if node.op == "call_function" and target is F.elu:
        return [activation_layer("elu", node.kwargs.get("alpha", node.args[1] if len(node.args) > 1 else 1.0))]
    if node.op == "call_function" and target is F.dropout:
        p = node.kwargs.get("p", node.args[1] if len(node.args) > 1 else 0.5)
        return [Imported({"kind": "dropout", "p": float(p)})]
    if target is operator.getitem:
        index = node.args[1]
        if before is None:  # a tuple: MultiheadAttention returns (output, weights)
            if index == 0:
                return []
            raise unsupported(f"element {index} of a tuple", where, "the first element (the attention output)")
        if after is not None and len(before) == 3 and len(after) == 2 and after[-1] == before[-1]:
            return [Imported({"kind": "pool", "type": "first_token"})]
    if before is not None and after is not None:
        flattens = (target in (torch.flatten,) or target in ("flatten", "view", "reshape")) and len(after) == 2
        if flattens and after[0] == before[0] and after[1] == math.prod(before[1:]):
            return [] if len(before) == 2 else [Imported({"kind": "flatten"})]
        if target in (torch.mean, "mean") and len(before) == 3 and after == (before[0], before[2]):
            return [Imported({"kind": "pool", "type": "avg_sequence"})]
        if target in (torch.mean, "mean") and len(before) == 4 and after == before[:2]:
            return [Imported({"kind": "pool", "type": "adaptive_avg"}), Imported({"kind": "flatten"})]
        if target in ("contiguous",) or (target in (F.dropout,)):
            return []
    raise unsupported(
        str(getattr(target, "__name__", target)),
        where,
        "a supported module (" + SUPPORTED + ") or relu/gelu/tanh/sigmoid, dropout, flatten, x + f(x), mean over the sequence",
    )


