"""What every layer kind provides, and the pieces kinds share.

A layer kind is one pydantic model (its spec) with hooks for: the shape it maps, its plain
``nn.Module`` skeleton (whose ``named_parameters()`` is the single source of parameter names
and shapes), the descriptor metadata of each parameter (param-type id, which index field each
dimension fills, init target) and its 21-field local-structure row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from ..enums import ActivationType, InitializationType
from ..errors import SpecError

# --------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class FeatureShape:
    """The per-example shape flowing between layers (batch dimension left out).

    kind: ``image`` (C, H, W); ``vector`` (F,); ``tokens`` (T,) integer ids;
    ``sequence`` (T, D); ``nodes`` (F,) per graph node.
    """

    kind: Literal["image", "vector", "tokens", "sequence", "nodes"]
    dims: tuple[int, ...]
    # Where this shape came from, for error messages: "layers[2].out_features".
    origin: str = field(default="the task input", compare=False)

    @property
    def features(self) -> int:
        """The size a layer reads: channels of an image, else the last dimension."""
        return self.dims[0] if self.kind == "image" else self.dims[-1]

    def describe(self) -> str:
        return f"{self.kind} {'x'.join(str(d) for d in self.dims)}"

    def with_origin(self, origin: str) -> FeatureShape:
        return FeatureShape(self.kind, self.dims, origin)


# --------------------------------------------------------------------------- runtime context


@dataclass
class ForwardContext:
    """Inputs that are not the activation itself: graph edges, text padding mask.

    ``cache`` holds per-batch derived tensors (e.g. GCN edge normalisation) so that they are
    computed once per forward of the whole model, not once per layer.
    """

    edge_index: torch.Tensor | None = None
    padding_mask: torch.Tensor | None = None  # True where the token is padding
    cache: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- per-param metadata


@dataclass(frozen=True)
class ParamMeta:
    """Descriptor facts of one parameter tensor.

    ``index_fields[k]`` names the index field that dimension k of the tensor fills. Adjacent
    dimensions with the same field are flattened row-major into that one field (e.g. a GAT
    attention vector (1, heads, out) fills ``output_idx`` with h*out + c).
    """

    param_type: int
    index_fields: tuple[str, ...]
    init_mean: float
    init_std: float


# --------------------------------------------------------------------------- shared spec fields


ActivationName = Literal["none", "leaky_relu", "elu", "silu", "relu", "gelu", "tanh", "sigmoid"]

# PyTorch's default parameter of each activation that has one (LeakyReLU slope, ELU alpha).
ACTIVATION_DEFAULT_PARAM: dict[str, float] = {"leaky_relu": 0.01, "elu": 1.0}


class Activation(BaseModel):
    """Pre-activation applied at the start of a layer. ``param`` is the LeakyReLU slope or
    the ELU alpha (unused by the others)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: ActivationName = "none"
    param: float = Field(0.0, ge=0.0, le=10.0)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        # `activation: elu` and `{type: elu}` both take PyTorch's default parameter (alpha 1):
        # an unstated param never silently means 0 (which would make ELU a ReLU).
        if isinstance(value, str):
            return {"type": value, "param": ACTIVATION_DEFAULT_PARAM.get(value, 0.0)}
        if isinstance(value, dict) and "param" not in value and isinstance(value.get("type"), str):
            return {**value, "param": ACTIVATION_DEFAULT_PARAM.get(value["type"], 0.0)}
        return value

    @property
    def type_id(self) -> int:
        return int(ActivationType[self.type.upper()])


def activate(x: torch.Tensor, activation: Activation) -> torch.Tensor:
    kind = activation.type
    if kind == "leaky_relu":
        return F.leaky_relu(x, activation.param)
    if kind == "elu":
        return F.elu(x, activation.param)
    if kind == "silu":
        return F.silu(x)
    if kind == "relu":
        return F.relu(x)
    if kind == "gelu":
        return F.gelu(x)
    if kind == "tanh":
        return torch.tanh(x)
    if kind == "sigmoid":
        return torch.sigmoid(x)
    return x


def feature_norm(x: torch.Tensor) -> torch.Tensor:
    """The parameter-free LayerNorm over the last dimension (no affine, eps 1e-5)."""
    return F.layer_norm(x, x.shape[-1:])


def pytorch_uniform_std(fan_in: int) -> float:
    """Std of PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) init."""
    return 1.0 / math.sqrt(3.0 * fan_in) if fan_in > 0 else 0.0


class LayerSpec(BaseModel):
    """Base of every layer kind's spec. Subclasses set ``kind`` and ``layer_type``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The descriptor's layer_type id: the authors' LayerType for their kinds, a new id (7 and
    # up, unique, checked by the registry) declared in the kind's own file otherwise.
    layer_type: ClassVar[int]
    # param_type id of each parameter, in storage order (ids restart at 0 for each kind); the
    # docs table is rendered from it and the property harness checks param_meta agrees.
    param_types: ClassVar[dict[str, int]] = {}
    # Local-structure fields this kind can use, with the full range of each categorical one;
    # normalisation ranges include these so that e.g. every activation id stays in range.
    categorical_domains: ClassVar[dict[str, tuple[float, float]]] = {}
    # Parameters the layer's output does not depend on at all, so their task-loss gradient
    # is zero by construction (an attention key bias: softmax ignores a shift shared by all
    # keys). They are still generated and matched by the init phase.
    gradient_free_params: ClassVar[frozenset[str]] = frozenset()

    init: Literal["default", "zero"] = "default"
    if TYPE_CHECKING:  # each kind declares its own ``kind: Literal[...]`` field
        kind: str

    @classmethod
    def finish_registry(cls, registry: dict[str, type[LayerSpec]]) -> None:
        """Called once every kind is registered (a block resolves its nested layer union)."""

    # --- hooks every kind implements -------------------------------------------------
    def children(self) -> list[tuple[str, LayerSpec]]:
        """Nested layers as (module path relative to this layer, spec); a block has some."""
        return []

    def flat_layers(self, prefix: str) -> list[tuple[str, LayerSpec]]:
        """This layer and every nested one in pre-order, with module paths: each gets its own
        local descriptor row and ``layer_idx`` (a kind without nesting is just itself)."""
        out: list[tuple[str, LayerSpec]] = [(prefix, self)]
        for path, child in self.children():
            out += child.flat_layers(f"{prefix}.{path}")
        return out

    def output_shape(self, inp: FeatureShape, path: str) -> FeatureShape:
        raise NotImplementedError

    def build_module(self) -> nn.Module:
        raise NotImplementedError

    def param_meta(self, name: str, shape: tuple[int, ...]) -> ParamMeta:
        raise NotImplementedError

    def local_fields(self) -> dict[str, float]:
        """The local-structure fields this layer sets (layer_idx/type are added for it)."""
        raise NotImplementedError

    # --- shared behaviour ---------------------------------------------------------------
    @property
    def init_type(self) -> InitializationType:
        return InitializationType[self.init.upper()]

    def local_row(self, layer_idx: int) -> dict[str, float]:
        row = {"layer_idx": float(layer_idx), "layer_type": float(self.layer_type)}
        row.update({k: float(v) for k, v in self.local_fields().items()})
        row["initialization_type"] = float(self.init_type)
        return row

    def checked_meta(self, name: str, shape: tuple[int, ...]) -> ParamMeta:
        """param_meta with the zero-init override and a consistency check."""
        meta = self.param_meta(name, shape)
        if len(meta.index_fields) != len(shape):
            raise AssertionError(
                f"{type(self).__name__}.param_meta({name!r}) gives {len(meta.index_fields)} "
                f"index fields for a {len(shape)}-d parameter"
            )
        if self.init_type is InitializationType.ZERO:
            return ParamMeta(meta.param_type, meta.index_fields, 0.0, 0.0)
        return meta

    @staticmethod
    def fail(path: str, message: str) -> SpecError:
        return SpecError(path, message)


def common_local_fields(
    *,
    bias: bool | None = None,
    norm: bool | None = None,
    shortcut: bool | None = None,
    activation: Activation | None = None,
    dropout: float | None = None,
) -> dict[str, float]:
    """The local fields most kinds share, in their descriptor encoding."""
    out: dict[str, float] = {}
    if bias is not None:
        out["bias_type"] = 1.0 if bias else 0.0
    if norm is not None:
        out["norm_type"] = 1.0 if norm else 0.0
    if shortcut is not None:
        out["shortcut_type"] = 1.0 if shortcut else 0.0
    if activation is not None:
        out["activation_type"] = float(activation.type_id)
        out["activation_param"] = float(activation.param)
    if dropout is not None:
        out["dropout_rate"] = float(dropout)
    return out


COMMON_DOMAINS: dict[str, tuple[float, float]] = {
    "bias_type": (0, 1),
    "norm_type": (0, 1),
    "shortcut_type": (0, 1),
    "activation_type": (0, 3),
}


class LayerTooLarge(ValueError):
    """A layer's sizes give a tensor of more than 2**63 elements."""


def meta_module(layer: LayerSpec) -> torch.nn.Module:
    """The layer's module on the meta device (shapes only, no memory); LayerTooLarge when its
    sizes overflow, for the caller to name where."""
    try:
        with torch.device("meta"):
            return layer.build_module()
    except RuntimeError as err:
        if "overflow" not in str(err).lower():
            raise
        raise LayerTooLarge("its sizes give a tensor of more than 2**63 elements") from None


def parameter_counts(layers: Sequence[LayerSpec]) -> list[int]:
    """Parameters per layer, from each layer's meta skeleton; a layer whose sizes overflow is a
    SpecError naming it."""
    counts = []
    for i, layer in enumerate(layers):
        try:
            module = meta_module(layer)
        except LayerTooLarge as err:
            raise SpecError(f"layers[{i}]", f"{err}; shrink them") from None
        counts.append(sum(p.numel() for p in module.parameters()))
    return counts
