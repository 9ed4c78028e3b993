"""An exported graph as data, and the interpreter that runs it.

``uhn import`` captures a module with ``torch.export`` and keeps its ATen graph in this form:
a list of nodes, each a whitelisted operator name with its arguments as JSON values (numbers,
strings, lists, ``{"ref": NAME}`` for an earlier value, ``{"dtype": ...}`` and a few other
typed constants). Nothing in it is code: loading validates names and values, and running it
calls only operators from ``ALLOWED_OPS`` (a crafted file can name nothing else), so a graph
file is as safe to read as a spec. ``torch.export.save``/``load`` are never used.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx
from pydantic import Field, model_validator

from .fields import StrictModel

# Format version of the graph data; a graph of another version is refused.
GRAPH_FORMAT = 1

# Pure tensor operators an imported graph may call (ATen names, ``aten.<op>.<overload>``),
# found in the graphs of torchvision, PyG and transformer models. Adding one is safe as long
# as it only computes on tensors (no I/O, no process or global state).
ATEN_OPS = """
abs acos acosh adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d
add add_ addcdiv addcmul addmm alias all amax amin any arange argmax argmin as_strided atan atan2 avg_pool1d
avg_pool2d avg_pool3d baddbmm batch_norm bernoulli bitwise_and bitwise_not bitwise_or bmm broadcast_tensors
bucketize cat ceil celu chunk clamp clamp_ clamp_max clamp_min clip clone constant_pad_nd contiguous conv1d conv2d
conv3d conv_transpose1d conv_transpose2d copy copy_ cos cosh cross cumprod cumsum detach diag diagonal div div_
dropout einsum elu embedding empty empty_like eq erf exp exp_ expand expand_as expm1 eye feature_dropout fill fill_
flatten flip floor floor_divide fmod full full_like gather ge gelu gelu_ glu group_norm gt hardsigmoid hardsigmoid_
hardswish hardswish_ hardtanh hardtanh_ index index_add index_add_ index_copy index_fill index_put index_put_
index_select instance_norm isinf isnan layer_norm le leaky_relu leaky_relu_ lerp lift_fresh_copy linalg_vector_norm
linear linspace lstm gru rnn_tanh log log1p log2 log_softmax logical_and logical_not logical_or logsumexp lt
masked_fill masked_fill_
masked_scatter matmul max max_pool1d max_pool2d max_pool2d_with_indices max_pool3d maximum mean min minimum mish mm
mul mul_ narrow ne neg new_empty new_full new_ones new_zeros nonzero norm numel one_hot ones ones_like pad permute
pixel_shuffle pixel_unshuffle pow pow_ prod reciprocal relu relu6 relu_ remainder repeat repeat_interleave reshape
roll round rsqrt rsub scalar_tensor scaled_dot_product_attention scatter scatter_ scatter_add scatter_add_
scatter_reduce scatter_reduce_ select select_scatter selu sigmoid sigmoid_ sign silu silu_ sin sinh slice
slice_scatter softmax softplus sort split split_with_sizes sqrt square squeeze stack std sub sub_ sum t tan tanh
tanh_ tensor_split threshold tile topk transpose tril triu true_divide type_as unbind unflatten unsqueeze
upsample_bilinear2d upsample_nearest2d var view view_as where zero_ zeros zeros_like _log_softmax _softmax
_to_copy _unsafe_view _native_batch_norm_legit_no_training native_dropout alpha_dropout to dropout_ feature_dropout_
alpha_dropout_
""".split()

PYTHON_OPS: dict[str, Callable[..., Any]] = {
    "operator.add": operator.add,
    "operator.sub": operator.sub,
    "operator.mul": operator.mul,
    "operator.floordiv": operator.floordiv,
    "operator.truediv": operator.truediv,
    "operator.mod": operator.mod,
    "operator.neg": operator.neg,
    "operator.pow": operator.pow,
    "operator.eq": operator.eq,
    "operator.ne": operator.ne,
    "operator.lt": operator.lt,
    "operator.le": operator.le,
    "operator.gt": operator.gt,
    "operator.ge": operator.ge,
    "operator.getitem": operator.getitem,
    "math.ceil": math.ceil,
    "math.floor": math.floor,
    "math.sqrt": math.sqrt,
    "torch.sym_max": max,
    "torch.sym_min": min,
    "torch.sym_float": float,
    "torch.sym_int": int,
}

# Size queries on symbolic (batch, node, edge) dimensions.
SIZE_OPS = ("sym_size", "sym_numel", "sym_stride", "sym_storage_offset")

# Operators whose training flag follows the model's mode, not the mode of the capture.
DROPOUT_OPS = frozenset(
    {"dropout", "feature_dropout", "alpha_dropout", "native_dropout", "dropout_", "feature_dropout_", "alpha_dropout_"}
)

DTYPES: dict[str, torch.dtype] = {
    str(dtype).removeprefix("torch."): dtype
    for dtype in (
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
        torch.complex64,
    )
}
LAYOUTS = {"strided": torch.strided}
MEMORY_FORMATS = {
    "contiguous_format": torch.contiguous_format,
    "preserve_format": torch.preserve_format,
    "channels_last": torch.channels_last,
}
SPECIAL_FLOATS = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
TYPED_KEYS = ("ref", "dtype", "device", "layout", "memory_format", "float")

# The largest graph a spec may carry (nodes) and constant tensor (elements): far above a
# ResNet-152 or ViT-L, far below what would make reading a crafted file expensive.
MAX_NODES = 200_000
MAX_CONSTANT_ELEMENTS = 4_000_000


def op_allowed(op: str) -> bool:
    """Whether ``op`` (``aten.<name>.<overload>`` or a ``PYTHON_OPS`` name) may run."""
    if op in PYTHON_OPS:
        return True
    parts = op.split(".")
    return len(parts) == 3 and parts[0] == "aten" and (parts[1] in ALLOWED_ATEN or parts[1] in SIZE_OPS)


ALLOWED_ATEN = frozenset(ATEN_OPS)


def resolve_op(op: str) -> Callable[..., Any]:
    """The callable of an allowed operator name (a ValueError for any other)."""
    if not op_allowed(op):
        raise ValueError(f"operator {op!r} is not among the operators an imported graph may call")
    if op in PYTHON_OPS:
        return PYTHON_OPS[op]
    _, name, overload = op.split(".")
    packet = getattr(torch.ops.aten, name)
    if overload not in packet.overloads():
        raise ValueError(f"operator {op!r}: {name} has no overload {overload!r}")
    return getattr(packet, overload)


class ConstantTensor(StrictModel):
    """A tensor the graph reads that is not generated: a buffer (not BatchNorm statistics)
    or a constant the forward creates. ``key`` is its state_dict key in the original module
    (null: not in it)."""

    key: str | None = None
    dtype: str
    shape: list[int]
    values: list[Any] = Field(description="row-major; inf, -inf and nan as {float: ...}")

    @model_validator(mode="after")
    def _consistent(self) -> ConstantTensor:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if any(d < 0 for d in self.shape) or math.prod(self.shape) != len(self.values):
            raise ValueError(f"values: {len(self.values)} values for shape {self.shape}")
        if len(self.values) > MAX_CONSTANT_ELEMENTS:
            raise ValueError(f"values: more than {MAX_CONSTANT_ELEMENTS} elements")
        for v in self.values:
            if isinstance(v, dict):
                check_value(v, set())
                if "float" not in v:
                    raise ValueError("values: numbers, or {float: inf / -inf / nan}")
            elif not isinstance(v, (bool, int, float)):
                raise ValueError("values: numbers, or {float: inf / -inf / nan}")
        return self

    def tensor(self) -> torch.Tensor:
        values = [SPECIAL_FLOATS[v["float"]] if isinstance(v, dict) else v for v in self.values]
        return torch.tensor(values, dtype=DTYPES[self.dtype]).reshape(self.shape)


class GraphNode(StrictModel):
    """One operator call: ``name = op(*args, **kwargs)``."""

    name: str
    op: str
    args: list[Any] = []
    kwargs: dict[str, Any] = {}


class ExportedGraph(StrictModel):
    """The graph of an imported module (see the module docstring): its user inputs, the
    state it reads (placeholder -> state_dict key of the original module; parameters are
    generated, BatchNorm statistics are kept by the norm parts, the rest are ``constants``),
    its nodes and its output value."""

    format: int = GRAPH_FORMAT
    inputs: list[str] = Field(min_length=1)
    params: dict[str, str] = {}
    buffers: dict[str, str] = {}
    constants: dict[str, ConstantTensor] = {}
    nodes: list[GraphNode] = Field(max_length=MAX_NODES)
    output: Any

    @model_validator(mode="after")
    def _well_formed(self) -> ExportedGraph:
        if self.format != GRAPH_FORMAT:
            raise ValueError(f"format: {self.format}; this uhn reads graph format {GRAPH_FORMAT}")
        defined = set(self.inputs) | set(self.params) | set(self.buffers) | set(self.constants)
        if len(defined) != len(self.inputs) + len(self.params) + len(self.buffers) + len(self.constants):
            raise ValueError("inputs, params, buffers and constants: a name appears twice")
        for i, node in enumerate(self.nodes):
            where = f"nodes[{i}]"
            try:
                resolve_op(node.op)
                check_value(node.args, defined)
                for item in node.kwargs.values():
                    check_value(item, defined)
            except ValueError as err:
                raise ValueError(f"{where} ({node.name}): {err}") from None
            if node.name in defined:
                raise ValueError(f"{where}: {node.name!r} is defined twice")
            defined.add(node.name)
        check_value(self.output, defined)
        return self


def check_value(value: Any, defined: set[str]) -> None:
    """A JSON argument is plain data and names only values defined before it."""
    if isinstance(value, dict):
        if len(value) != 1 or next(iter(value)) not in TYPED_KEYS:
            raise ValueError(f"a dict is not a graph value unless it is one of {{{', '.join(TYPED_KEYS)}: ...}}")
        decode_typed(value, defined)
    elif isinstance(value, list):
        for item in value:
            check_value(item, defined)
    elif not (value is None or isinstance(value, (bool, int, float, str))):
        raise ValueError(f"{type(value).__name__} is not a graph value")


def decode_typed(value: dict[str, Any], defined: set[str]) -> Any:
    ((key, item),) = value.items()
    tables: dict[str, dict[str, Any]] = {
        "dtype": DTYPES,
        "layout": LAYOUTS,
        "memory_format": MEMORY_FORMATS,
        "float": SPECIAL_FLOATS,
    }
    if key == "ref":
        if item not in defined:
            raise ValueError(f"{item!r} is used before it is defined")
        return None
    if key == "device":
        return None
    if not isinstance(item, str) or item not in tables[key]:
        raise ValueError(f"{key} {item!r} is not one of {', '.join(tables[key])}")
    return tables[key][item]


# --------------------------------------------------------------------------- encoding


def encode_value(value: Any) -> Any:
    """An fx argument as graph data (fx nodes are given as ``{"ref": name}`` by the caller's
    ``torch.fx.map_arg``); a ValueError for anything that is not plain data."""
    if isinstance(value, torch.fx.Node):
        return {"ref": value.name}
    if isinstance(value, (list, tuple)):
        return [encode_value(v) for v in value]
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": value.type}
    if isinstance(value, torch.layout):
        return {"layout": str(value).removeprefix("torch.")}
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value).removeprefix("torch.")}
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"an argument of type {type(value).__name__} ({value!r:.60}) has no data form")


def op_name(target: Any) -> str:
    """``aten.conv2d.default`` for an ATen overload, ``operator.add`` for a Python operator."""
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}.{target._opname}.{target._overloadname}"
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", str(target))
    if module in ("_operator", "operator"):
        return f"operator.{name}"
    return (
        f"{module.removeprefix('torch.')}.{name}"
        if module.startswith("torch") and module != "torch"
        else f"{module}.{name}"
    )


# --------------------------------------------------------------------------- running


class GraphProgram:
    """A validated graph with its operators resolved once; ``run`` executes it."""

    def __init__(self, graph: ExportedGraph):
        self.graph = graph
        self.steps: list[tuple[str, str, Callable[..., Any], list[Any], dict[str, Any]]] = []
        for node in graph.nodes:
            self.steps.append((node.name, node.op.split(".")[1], resolve_op(node.op), node.args, node.kwargs))

    def run(
        self,
        feeds: dict[str, Any],
        training: bool,
        device: torch.device,
        overrides: dict[str, Callable[[list[Any]], Any]] | None = None,
    ) -> Any:
        """Run with ``feeds`` (every input, parameter, buffer and constant by placeholder
        name). Dropout follows ``training``; ``overrides`` replace whole nodes (a BatchNorm
        node runs its norm part, which keeps and recalibrates its running statistics)."""
        env = dict(feeds)
        overrides = overrides or {}

        def value(item: Any) -> Any:
            if isinstance(item, dict):  # one typed key (checked when the graph was read)
                key = next(iter(item))
                if key == "ref":
                    return env[item["ref"]]
                return device if key == "device" else decode_typed(item, set())
            if isinstance(item, list):
                return [value(v) for v in item]
            return item

        for name, short, fn, args, kwargs in self.steps:
            call_args = value(args)
            if name in overrides:
                env[name] = overrides[name](call_args)
                continue
            call_kwargs = {k: value(v) for k, v in kwargs.items()}
            if short in DROPOUT_OPS:
                if len(call_args) > 2:
                    call_args[2] = training
                else:
                    call_kwargs["train"] = training
            env[name] = fn(*call_args, **call_kwargs)
        return value(self.graph.output)
