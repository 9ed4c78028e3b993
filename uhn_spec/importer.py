"""`uhn import`: an ``nn.Module`` traced with torch.fx becomes the equivalent spec.

Supported modules are treated as leaves of the trace (a ``TransformerEncoderLayer`` or a PyG
``GCNConv`` is one node), so their internal control flow is never traced; the functions and
methods between them (activations, dropout, flatten, sequence mean, residual additions) map to
layers too. An addition of two paths from one fork becomes a ``block`` (the longer path its
layers, the other its shortcut: identity when empty).

Each imported layer records where its parameters and buffers live in the original module, so
generated weights go back into it (``module_state_dict``): a state_dict the original class
loads with ``strict=True``, whose outputs equal the spec's functional target.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import operator
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .errors import UHNError
from .tasks import DATASETS


class ModuleImportError(UHNError):
    """A module cannot be imported as a spec: names the op, its module path and the nearest
    supported form."""


# --------------------------------------------------------------------------- loading MODULE:ATTR


def load_module_ref(ref: str) -> nn.Module:
    """``path/to/file.py:Name`` or ``package.module:Name``; Name is an ``nn.Module`` class
    or a zero-argument factory, called with no arguments."""
    if ":" not in ref:
        raise UHNError(f"{ref}: expected FILE.py:NAME or MODULE:NAME (a class or zero-argument factory)")
    where, attr = ref.rsplit(":", 1)
    if where.endswith(".py") or "/" in where:
        path = Path(where)
        if not path.is_file():
            raise UHNError(f"{ref}: no such file {where}")
        name = f"uhn_import_{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)}"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look classes up here
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as err:
            raise UHNError(f"{ref}: cannot import {where} ({err})") from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise UHNError(f"{ref}: {where} has no attribute {attr}")
    made = factory()
    if not isinstance(made, nn.Module):
        raise UHNError(f"{ref}: {attr}() gives a {type(made).__name__}, not an nn.Module")
    return made


# --------------------------------------------------------------------------- imported layers


@dataclass
class KeyLink:
    """One spec tensor (``spec_name``, local to its layer) and where it lives in the module:
    ``module_key`` whole, or its ``chunk``-th third (MHA's stacked in_proj)."""

    spec_name: str
    module_key: str
    chunk: int | None = None


@dataclass
class Imported:
    """One spec layer (its YAML mapping) with its key links; a block holds nested ones."""

    layer: dict[str, Any]
    links: list[KeyLink] = field(default_factory=list)
    main: list["Imported"] = field(default_factory=list)
    shortcut: list["Imported"] = field(default_factory=list)

    def to_yaml(self) -> dict[str, Any]:
        if self.layer["kind"] != "block":
            return dict(self.layer)
        shortcut: Any = [i.to_yaml() for i in self.shortcut] if self.shortcut else "identity"
        return {"kind": "block", "layers": [i.to_yaml() for i in self.main], "shortcut": shortcut}

    def key_map(self, prefix: str) -> list[tuple[str, KeyLink]]:
        """(spec state_dict key, link) of this layer and its nested ones."""
        out = [(f"{prefix}.{link.spec_name}", link) for link in self.links]
        for i, child in enumerate(self.main):
            out += child.key_map(f"{prefix}.layers.{i}")
        for i, child in enumerate(self.shortcut):
            out += child.key_map(f"{prefix}.shortcut.{i}")
        return out


def linked(layer: dict[str, Any], prefix: str, names: dict[str, str]) -> Imported:
    """A layer whose spec tensors are module tensors of other names (spec name -> module name)."""
    return Imported(layer, [KeyLink(ours, f"{prefix}.{theirs}" if prefix else theirs) for ours, theirs in names.items()])


def affine_names(module: nn.Module, *names: str) -> dict[str, str]:
    return {name: name for name in names if getattr(module, name, None) is not None}


# --------------------------------------------------------------------------- module converters


def unsupported(op: str, where: str, nearest: str) -> ModuleImportError:
    return ModuleImportError(f"{where or 'the model'}: {op} is not supported; nearest supported form: {nearest}")


def square(value: Any, what: str, where: str, op: str) -> int:
    if isinstance(value, (tuple, list)):
        if len(set(value)) != 1:
            raise unsupported(f"{op} with {what} {tuple(value)}", where, f"a square {what}")
        return int(value[0])
    return int(value)


def convert_linear(m: nn.Linear, q: str, ctx: "TraceState") -> list[Imported]:
    layer = {"kind": "linear", "in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}
    return [linked(layer, q, {"weight": "weight", **affine_names(m, "bias")})]


def convert_conv2d(m: nn.Conv2d, q: str, ctx: "TraceState") -> list[Imported]:
    k = square(m.kernel_size, "kernel", q, "Conv2d")
    stride = square(m.stride, "stride", q, "Conv2d")
    padding = m.padding if isinstance(m.padding, str) else square(m.padding, "padding", q, "Conv2d")
    nearest = "Conv2d(in, out, k, stride=1 or 2, padding=k//2) with odd k, groups=1, dilation=1, padding_mode='zeros'"
    same = padding == k // 2 or (padding == "same" and stride == 1)
    if k % 2 == 0 or not same or stride not in (1, 2) or m.groups != 1 or square(m.dilation, "dilation", q, "Conv2d") != 1 or m.padding_mode != "zeros":
        raise unsupported(f"Conv2d(kernel {m.kernel_size}, stride {m.stride}, padding {m.padding}, groups {m.groups})", q, nearest)
    layer = {
        "kind": "conv2d",
        "in_channels": m.in_channels,
        "out_channels": m.out_channels,
        "kernel_size": k,
        "bias": m.bias is not None,
        "stage_pooling": "conv_pooling" if stride == 2 else "none",
    }
    return [linked(layer, q, {"weight": "weight", **affine_names(m, "bias")})]


def convert_batch_norm(m: nn.modules.batchnorm._BatchNorm, q: str, ctx: "TraceState") -> list[Imported]:
    if not m.track_running_stats or m.momentum is None:
        raise unsupported("BatchNorm without running statistics or with momentum=None", q, "BatchNorm2d(C) / BatchNorm1d(F) with the defaults")
    layer = {"kind": "norm", "type": "batch", "features": m.num_features, "affine": m.affine, "eps": m.eps, "momentum": m.momentum}
    names = {**affine_names(m, "weight", "bias"), "running_mean": "running_mean", "running_var": "running_var", "num_batches_tracked": "num_batches_tracked"}
    return [linked(layer, q, names)]


def convert_layer_norm(m: nn.LayerNorm, q: str, ctx: "TraceState") -> list[Imported]:
    if len(m.normalized_shape) != 1 or (m.elementwise_affine and m.bias is None):
        raise unsupported(f"LayerNorm{tuple(m.normalized_shape)}", q, "LayerNorm(features) over the last dimension, with weight and bias")
    layer = {"kind": "norm", "type": "layer", "features": m.normalized_shape[0], "affine": m.elementwise_affine, "eps": m.eps}
    return [linked(layer, q, affine_names(m, "weight", "bias"))]


def convert_group_norm(m: nn.GroupNorm, q: str, ctx: "TraceState") -> list[Imported]:
    layer = {"kind": "norm", "type": "group", "features": m.num_channels, "groups": m.num_groups, "affine": m.affine, "eps": m.eps}
    return [linked(layer, q, affine_names(m, "weight", "bias"))]


def activation_layer(name: str, param: float | None = None) -> Imported:
    layer: dict[str, Any] = {"kind": "activation", "type": name}
    if param is not None:
        layer["param"] = float(param)
    return Imported(layer)


def convert_activation(m: nn.Module, q: str, ctx: "TraceState") -> list[Imported]:
    if isinstance(m, nn.GELU) and m.approximate != "none":
        raise unsupported("GELU(approximate='tanh')", q, "GELU()")
    if isinstance(m, nn.LeakyReLU):
        return [activation_layer("leaky_relu", m.negative_slope)]
    if isinstance(m, nn.ELU):
        return [activation_layer("elu", m.alpha)]
    return [activation_layer(ACTIVATION_MODULES[type(m)])]


def convert_pool(m: nn.Module, q: str, ctx: "TraceState") -> list[Imported]:
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        size = square(m.output_size, "output_size", q, type(m).__name__)
        kind = "adaptive_avg" if isinstance(m, nn.AdaptiveAvgPool2d) else "adaptive_max"
        return [Imported({"kind": "pool", "type": kind, "output_size": size})]
    nearest = f"{type(m).__name__}(k, stride, padding) with square sizes, ceil_mode=False"
    if m.ceil_mode or (isinstance(m, nn.MaxPool2d) and square(m.dilation, "dilation", q, "MaxPool2d") != 1):
        raise unsupported(f"{type(m).__name__} with ceil_mode or dilation", q, nearest)
    if isinstance(m, nn.AvgPool2d) and (not m.count_include_pad or m.divisor_override is not None):
        raise unsupported("AvgPool2d(count_include_pad=False or divisor_override)", q, nearest)
    k = square(m.kernel_size, "kernel", q, type(m).__name__)
    stride = square(m.stride if m.stride is not None else k, "stride", q, type(m).__name__)
    padding = square(m.padding, "padding", q, type(m).__name__)
    kind = "max" if isinstance(m, nn.MaxPool2d) else "avg"
    return [Imported({"kind": "pool", "type": kind, "kernel_size": k, "stride": stride, "padding": padding})]


def convert_flatten(m: nn.Flatten, q: str, ctx: "TraceState") -> list[Imported]:
    if m.start_dim != 1 or m.end_dim != -1:
        raise unsupported(f"Flatten(start_dim={m.start_dim}, end_dim={m.end_dim})", q, "Flatten() (start_dim=1)")
    return [Imported({"kind": "flatten"})]


def convert_dropout(m: nn.Dropout, q: str, ctx: "TraceState") -> list[Imported]:
    return [Imported({"kind": "dropout", "p": float(m.p)})]


def convert_embedding(m: nn.Embedding, q: str, ctx: "TraceState") -> list[Imported]:
    if m.max_norm is not None or m.scale_grad_by_freq or m.sparse:
        raise unsupported("Embedding(max_norm / scale_grad_by_freq / sparse)", q, "Embedding(num, dim)")
    layer = {
        "kind": "embedding",
        "num_embeddings": m.num_embeddings,
        "embedding_dim": m.embedding_dim,
        "max_length": ctx.sequence_length,
        "positions": False,
    }
    ctx.vocab_size = m.num_embeddings
    return [linked(layer, q, {"weight": "weight"})]


def mha_layer(m: nn.MultiheadAttention, q: str, dropout: float) -> Imported:
    if not m.batch_first or not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
        raise unsupported("MultiheadAttention without batch_first=True, or with kdim/vdim, add_bias_kv or add_zero_attn", q, "MultiheadAttention(d, heads, batch_first=True)")
    d = m.embed_dim
    bias = m.in_proj_bias is not None
    layer = {"kind": "mha", "dim": d, "heads": m.num_heads, "bias": bias, "dropout": float(dropout)}
    links = [KeyLink(f"{n}_weight", f"{q}.in_proj_weight", i) for i, n in enumerate("qkv")]
    if bias:
        links += [KeyLink(f"{n}_bias", f"{q}.in_proj_bias", i) for i, n in enumerate("qkv")]
    links.append(KeyLink("out_weight", f"{q}.out_proj.weight"))
    if bias:
        links.append(KeyLink("out_bias", f"{q}.out_proj.bias"))
    return Imported(layer, links)


def convert_mha(m: nn.MultiheadAttention, q: str, ctx: "TraceState") -> list[Imported]:
    return [mha_layer(m, q, m.dropout)]


def convert_encoder_layer(m: nn.TransformerEncoderLayer, q: str, ctx: "TraceState") -> list[Imported]:
    kind = getattr(m, "activation_relu_or_gelu", 0)
    if kind not in (1, 2) or m.linear1.bias is None:
        raise unsupported("TransformerEncoderLayer with a custom activation or bias=False", q, "TransformerEncoderLayer(d, heads, ff, activation='relu' or 'gelu', batch_first=True)")
    p = float(m.dropout.p)
    attention = mha_layer(m.self_attn, f"{q}.self_attn", p)
    d, ff = m.linear1.in_features, m.linear1.out_features
    linear1 = linked({"kind": "linear", "in_features": d, "out_features": ff}, f"{q}.linear1", {"weight": "weight", "bias": "bias"})
    linear2 = linked({"kind": "linear", "in_features": ff, "out_features": d, "dropout": p}, f"{q}.linear2", {"weight": "weight", "bias": "bias"})
    feed_forward = [linear1, activation_layer("relu" if kind == 1 else "gelu"), Imported({"kind": "dropout", "p": p}), linear2]
    norm1, norm2 = (convert_layer_norm(m.norm1, f"{q}.norm1", ctx)[0], convert_layer_norm(m.norm2, f"{q}.norm2", ctx)[0])
    if m.norm_first:
        return [block([norm1, attention], []), block([norm2, *feed_forward], [])]
    return [block([attention], []), norm1, block(feed_forward, []), norm2]


def convert_encoder(m: nn.TransformerEncoder, q: str, ctx: "TraceState") -> list[Imported]:
    out: list[Imported] = []
    for i, layer in enumerate(m.layers):
        out += convert_encoder_layer(layer, f"{q}.layers.{i}", ctx)
    if m.norm is not None:
        if not isinstance(m.norm, nn.LayerNorm):
            raise unsupported(f"TransformerEncoder norm {type(m.norm).__name__}", f"{q}.norm", "LayerNorm(d)")
        out += convert_layer_norm(m.norm, f"{q}.norm", ctx)
    return out


def convert_gcn(m: nn.Module, q: str, ctx: "TraceState") -> list[Imported]:
    if not (m.normalize and m.add_self_loops) or m.improved:
        raise unsupported("GCNConv(improved=True, normalize=False or add_self_loops=False)", q, "GCNConv(in, out)")
    layer = {"kind": "gcn", "in_features": m.in_channels, "out_features": m.out_channels, "bias": m.bias is not None}
    return [linked(layer, q, {"weight": "lin.weight", **({"bias": "bias"} if m.bias is not None else {})})]


def convert_gat(m: nn.Module, q: str, ctx: "TraceState") -> list[Imported]:
    if not isinstance(m.in_channels, int) or m.edge_dim is not None or not m.add_self_loops or m.negative_slope != 0.2 or m.lin is None:
        raise unsupported("GATConv with bipartite inputs, edge_dim, negative_slope other than 0.2 or no self-loops", q, "GATConv(in, out, heads, concat, dropout)")
    layer = {
        "kind": "gat",
        "in_features": m.in_channels,
        "out_features": m.out_channels,
        "heads": m.heads,
        "concat": m.concat,
        "bias": m.bias is not None,
        "dropout": float(m.dropout),
    }
    names = {"weight": "lin.weight", **({"bias": "bias"} if m.bias is not None else {}), "att_src": "att_src", "att_dst": "att_dst"}
    return [linked(layer, q, names)]


def block(main: list[Imported], shortcut: list[Imported]) -> Imported:
    return Imported({"kind": "block"}, main=main, shortcut=shortcut)


ACTIVATION_MODULES: dict[type, str] = {
    nn.ReLU: "relu",
    nn.GELU: "gelu",
    nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid",
    nn.SiLU: "silu",
    nn.LeakyReLU: "leaky_relu",
    nn.ELU: "elu",
}

Converter = Callable[[Any, str, "TraceState"], list[Imported]]

MODULE_CONVERTERS: dict[type, Converter] = {
    nn.Linear: convert_linear,
    nn.Conv2d: convert_conv2d,
    nn.BatchNorm1d: convert_batch_norm,
    nn.BatchNorm2d: convert_batch_norm,
    nn.LayerNorm: convert_layer_norm,
    nn.GroupNorm: convert_group_norm,
    **{cls: convert_activation for cls in ACTIVATION_MODULES},
    nn.MaxPool2d: convert_pool,
    nn.AvgPool2d: convert_pool,
    nn.AdaptiveAvgPool2d: convert_pool,
    nn.AdaptiveMaxPool2d: convert_pool,
    nn.Flatten: convert_flatten,
    nn.Dropout: convert_dropout,
    nn.Embedding: convert_embedding,
    nn.MultiheadAttention: convert_mha,
    nn.TransformerEncoderLayer: convert_encoder_layer,
    nn.TransformerEncoder: convert_encoder,
}

# PyTorch Geometric's layers, by class name (importing torch_geometric is slow).
PYG_CONVERTERS: dict[str, Converter] = {"GCNConv": convert_gcn, "GATConv": convert_gat}

SUPPORTED = "Linear, Conv2d, BatchNorm1d/2d, LayerNorm, GroupNorm, ReLU/GELU/Tanh/Sigmoid/SiLU/LeakyReLU/ELU, MaxPool2d, AvgPool2d, AdaptiveAvg/MaxPool2d, Flatten, Dropout, Embedding, MultiheadAttention, TransformerEncoder(Layer), GCNConv, GATConv"


# The nearest supported form of common modules that are not supported.
NEAREST: dict[str, str] = {
    "LSTM": "MultiheadAttention or TransformerEncoderLayer(batch_first=True)",
    "GRU": "MultiheadAttention or TransformerEncoderLayer(batch_first=True)",
    "RNN": "MultiheadAttention or TransformerEncoderLayer(batch_first=True)",
    "Conv1d": "Conv2d with an odd square kernel",
    "Conv3d": "Conv2d with an odd square kernel",
    "ConvTranspose2d": "Conv2d with an odd square kernel",
    "BatchNorm3d": "BatchNorm2d",
    "InstanceNorm2d": "GroupNorm(C, C)",
    "Upsample": "no upsampling is supported; AdaptiveAvgPool2d changes the size",
    "Softmax": "return the logits (the loss applies softmax)",
    "LogSoftmax": "return the logits (the loss applies log-softmax)",
    "Identity": "remove it",
}


def converter_of(module: nn.Module) -> Converter | None:
    found = MODULE_CONVERTERS.get(type(module))
    if found is None and type(module).__module__.startswith("torch_geometric"):
        found = PYG_CONVERTERS.get(type(module).__name__)
    return found


# --------------------------------------------------------------------------- tracing


class LeafTracer(torch.fx.Tracer):
    """Stops at every supported module (and, as fx does, at every other torch.nn module)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return converter_of(m) is not None or super().is_leaf_module(m, module_qualified_name)


@dataclass
class TraceState:
    sequence_length: int = 0
    vocab_size: int | None = None
    graph: bool = False


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
    from torch.fx.passes.shape_prop import ShapeProp

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


# --------------------------------------------------------------------------- the spec


@dataclass
class ImportedModel:
    """The spec (as YAML data), the key map back into the module, and the module's count."""

    spec: dict[str, Any]
    layers: list[Imported]
    num_params: int

    def key_map(self) -> list[tuple[str, KeyLink]]:
        return [item for i, layer in enumerate(self.layers) for item in layer.key_map(f"layers.{i}")]


def family_of(kinds: set[str]) -> str:
    for kind, family in (("mha", "transformer"), ("gat", "gat"), ("gcn", "gcn"), ("conv2d", "cnn")):
        if kind in kinds:
            return family
    return "mlp"


def all_kinds(layers: list[Imported]) -> set[str]:
    kinds: set[str] = set()
    for layer in layers:
        kinds.add(layer.layer["kind"])
        kinds |= all_kinds(layer.main) | all_kinds(layer.shortcut)
    return kinds


def graph_features(graph: str, input_shape: tuple[int, ...] | None) -> int:
    """Features per node: the graph dataset's, or ``input_shape`` (F,) for ``synthetic``."""
    if graph == "synthetic":
        if input_shape is None or len(input_shape) != 1:
            raise UHNError("--graph synthetic: give the features per node as --input-shape F")
        return input_shape[0]
    if graph not in DATASETS or DATASETS[graph].input_kind != "nodes":
        graphs = ", ".join(k for k, v in DATASETS.items() if v.input_kind == "nodes")
        raise UHNError(f"--graph: {graph!r} is not a graph dataset; use one of: {graphs}, or synthetic with --input-shape F")
    if input_shape is not None:
        raise UHNError(f"uhn import: --graph {graph} fixes the input; leave out --input-shape")
    return DATASETS[graph].input_dims[0]


def example_input(model: nn.Module, input_shape: tuple[int, ...] | None, graph: str | None) -> tuple[tuple[torch.Tensor, ...], TraceState]:
    gen = torch.Generator().manual_seed(0)
    if graph is not None:
        features = graph_features(graph, input_shape)
        nodes = 6
        return (torch.randn(nodes, features, generator=gen), torch.randint(0, nodes, (2, 12), generator=gen)), TraceState(graph=True)
    assert input_shape is not None
    first = next((m for m in model.modules() if converter_of(m) is not None), None)
    if isinstance(first, nn.Embedding):
        if len(input_shape) != 1:
            raise UHNError("--input-shape: a model that starts with an Embedding reads token ids: give the sequence length T")
        tokens = torch.randint(0, first.num_embeddings, (2, input_shape[0]), generator=gen)
        return (tokens,), TraceState(sequence_length=input_shape[0])
    return (torch.randn(2, *input_shape, generator=gen),), TraceState()


def import_model(
    model: nn.Module,
    input_shape: tuple[int, ...] | None = None,
    graph: str | None = None,
    name: str = "imported",
    dataset: str | None = None,
) -> ImportedModel:
    """Trace ``model`` and give its spec; ``graph`` (a graph dataset) instead of ``input_shape``
    for models called as ``model(x, edge_index)``, or ``graph="synthetic"`` with
    ``input_shape=(features per node,)`` for a synthetic graph task."""
    if input_shape is None and graph is None:
        raise UHNError("uhn import: give --input-shape, or --graph for a graph model")
    model = model.eval()
    example, state = example_input(model, input_shape, graph)
    with torch.no_grad():
        out = model(*example)
    layers = trace_layers(model, example, state)
    outputs = int(out.shape[-1])
    if graph == "synthetic":
        shape = {"input_dims": list(input_shape or ()), "num_outputs": outputs}
        task: dict[str, Any] = {"dataset": "synthetic", "synthetic": {"task_type": "graph_node_classification", **shape}}
    elif graph is not None:
        task = {"dataset": graph}
    elif dataset is not None:
        task = {"dataset": dataset}
    elif state.vocab_size is not None:
        task = {
            "dataset": "synthetic",
            "synthetic": {"task_type": "text_classification", "input_dims": [state.vocab_size], "num_outputs": outputs},
            "vocab_size": state.vocab_size,
            "max_length": state.sequence_length,
        }
    else:
        task_type = "image_classification" if len(input_shape or ()) == 3 else "formula_regression"
        task = {"dataset": "synthetic", "synthetic": {"task_type": task_type, "input_dims": list(input_shape or ()), "num_outputs": outputs}}
    spec = {
        "name": name,
        "description": f"imported from {type(model).__name__} by uhn import",
        "family": family_of(all_kinds(layers)),
        "task": task,
        "layers": [layer.to_yaml() for layer in layers],
    }
    return ImportedModel(spec, layers, sum(p.numel() for p in model.parameters()))


def module_state_dict(imported: ImportedModel, spec_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The spec target's state_dict (parameters and buffers) under the original module's keys:
    MHA's q/k/v blocks are joined back into ``in_proj_weight`` / ``in_proj_bias``."""
    chunks: dict[str, dict[int, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for spec_key, link in imported.key_map():
        tensor = spec_state[spec_key]
        if link.chunk is None:
            out[link.module_key] = tensor
        else:
            chunks.setdefault(link.module_key, {})[link.chunk] = tensor
    for key, parts in chunks.items():
        out[key] = torch.cat([parts[i] for i in sorted(parts)])
    return out


def import_for_spec(ref: str, spec: Any) -> tuple[nn.Module, ImportedModel]:
    """Load ``ref`` and import it with the input the spec's task gives; refuse a module whose
    layers differ from the spec's (it is not the class the spec was imported from)."""
    from .spec import ExperimentSpec

    module = load_module_ref(ref)
    info = spec.task.info
    if info.input_kind == "nodes":
        synthetic = spec.task.dataset == "synthetic"
        imported = import_model(module, input_shape=tuple(info.input_dims) if synthetic else None, graph=spec.task.dataset)
    else:
        shape = (spec.task.max_length,) if info.input_kind == "tokens" else tuple(info.input_dims)
        imported = import_model(module, input_shape=shape)
    traced = ExperimentSpec.model_validate({**imported.spec, "task": spec.task.model_dump(), "name": spec.name})
    if traced.layers != spec.layers:
        first = next((i for i, (a, b) in enumerate(zip(traced.layers, spec.layers)) if a != b), min(len(traced.layers), len(spec.layers)))
        raise UHNError(f"--for-module: {ref} does not match the run's spec (they differ at layers[{first}]); give the class the spec was imported from")
    return module, imported
