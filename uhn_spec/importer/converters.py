"""The module converters of ``uhn import``: each supported ``nn.Module`` becomes spec layers
(``Imported``) that remember where their parameters live in the original module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from ..errors import UHNError


@dataclass
class TraceState:
    """What the trace has learnt of the input, which some converters need."""

    sequence_length: int = 0
    vocab_size: int | None = None
    graph: bool = False


class ModuleImportError(UHNError):
    """A module cannot be imported as a spec: names the op, its module path and the nearest
    supported form."""


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


def convert_linear(m: nn.Linear, q: str, ctx: TraceState) -> list[Imported]:
    layer = {"kind": "linear", "in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}
    return [linked(layer, q, {"weight": "weight", **affine_names(m, "bias")})]


def convert_conv2d(m: nn.Conv2d, q: str, ctx: TraceState) -> list[Imported]:
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


def convert_batch_norm(m: nn.modules.batchnorm._BatchNorm, q: str, ctx: TraceState) -> list[Imported]:
    if not m.track_running_stats or m.momentum is None:
        raise unsupported("BatchNorm without running statistics or with momentum=None", q, "BatchNorm2d(C) / BatchNorm1d(F) with the defaults")
    layer = {"kind": "norm", "type": "batch", "features": m.num_features, "affine": m.affine, "eps": m.eps, "momentum": m.momentum}
    names = {**affine_names(m, "weight", "bias"), "running_mean": "running_mean", "running_var": "running_var", "num_batches_tracked": "num_batches_tracked"}
    return [linked(layer, q, names)]


def convert_layer_norm(m: nn.LayerNorm, q: str, ctx: TraceState) -> list[Imported]:
    if len(m.normalized_shape) != 1 or (m.elementwise_affine and m.bias is None):
        raise unsupported(f"LayerNorm{tuple(m.normalized_shape)}", q, "LayerNorm(features) over the last dimension, with weight and bias")
    layer = {"kind": "norm", "type": "layer", "features": m.normalized_shape[0], "affine": m.elementwise_affine, "eps": m.eps}
    return [linked(layer, q, affine_names(m, "weight", "bias"))]


def convert_group_norm(m: nn.GroupNorm, q: str, ctx: TraceState) -> list[Imported]:
    layer = {"kind": "norm", "type": "group", "features": m.num_channels, "groups": m.num_groups, "affine": m.affine, "eps": m.eps}
    return [linked(layer, q, affine_names(m, "weight", "bias"))]


def activation_layer(name: str, param: float | None = None) -> Imported:
    layer: dict[str, Any] = {"kind": "activation", "type": name}
    if param is not None:
        layer["param"] = float(param)
    return Imported(layer)


def convert_activation(m: nn.Module, q: str, ctx: TraceState) -> list[Imported]:
    if isinstance(m, nn.GELU) and m.approximate != "none":
        raise unsupported("GELU(approximate='tanh')", q, "GELU()")
    if isinstance(m, nn.LeakyReLU):
        return [activation_layer("leaky_relu", m.negative_slope)]
    if isinstance(m, nn.ELU):
        return [activation_layer("elu", m.alpha)]
    return [activation_layer(ACTIVATION_MODULES[type(m)])]


def convert_pool(m: nn.Module, q: str, ctx: TraceState) -> list[Imported]:
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


def convert_flatten(m: nn.Flatten, q: str, ctx: TraceState) -> list[Imported]:
    if m.start_dim != 1 or m.end_dim != -1:
        raise unsupported(f"Flatten(start_dim={m.start_dim}, end_dim={m.end_dim})", q, "Flatten() (start_dim=1)")
    return [Imported({"kind": "flatten"})]


def convert_dropout(m: nn.Dropout, q: str, ctx: TraceState) -> list[Imported]:
    return [Imported({"kind": "dropout", "p": float(m.p)})]


def convert_embedding(m: nn.Embedding, q: str, ctx: TraceState) -> list[Imported]:
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


def convert_mha(m: nn.MultiheadAttention, q: str, ctx: TraceState) -> list[Imported]:
    return [mha_layer(m, q, m.dropout)]


def convert_encoder_layer(m: nn.TransformerEncoderLayer, q: str, ctx: TraceState) -> list[Imported]:
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


def convert_encoder(m: nn.TransformerEncoder, q: str, ctx: TraceState) -> list[Imported]:
    out: list[Imported] = []
    for i, layer in enumerate(m.layers):
        out += convert_encoder_layer(layer, f"{q}.layers.{i}", ctx)
    if m.norm is not None:
        if not isinstance(m.norm, nn.LayerNorm):
            raise unsupported(f"TransformerEncoder norm {type(m.norm).__name__}", f"{q}.norm", "LayerNorm(d)")
        out += convert_layer_norm(m.norm, f"{q}.norm", ctx)
    return out


def convert_gcn(m: nn.Module, q: str, ctx: TraceState) -> list[Imported]:
    if not (m.normalize and m.add_self_loops) or m.improved:
        raise unsupported("GCNConv(improved=True, normalize=False or add_self_loops=False)", q, "GCNConv(in, out)")
    layer = {"kind": "gcn", "in_features": m.in_channels, "out_features": m.out_channels, "bias": m.bias is not None}
    return [linked(layer, q, {"weight": "lin.weight", **({"bias": "bias"} if m.bias is not None else {})})]


def convert_gat(m: nn.Module, q: str, ctx: TraceState) -> list[Imported]:
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

Converter = Callable[[Any, str, TraceState], list[Imported]]

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


