"""Block: several layers under one shortcut, ``out = layers(x) + shortcut(x)``.

The shortcut is the identity or a list of layers of its own (a 1x1 projection conv and its
norm in a ResNet), generated like every other layer. A post-activation after the sum (ResNet's
final ReLU) is the next layer of the list. Described as a parameter-free layer of its own
(``shortcut_type`` 1 identity, 2 projection) followed, in pre-order, by its main layers and
then its shortcut layers, each with its own descriptor row and ``layer_idx``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal, Union

import torch
from pydantic import Field
from torch import nn

from ..enums import ShortcutType
from . import register
from .base import FeatureShape, ForwardContext, LayerSpec, ParamMeta

if TYPE_CHECKING:  # at run time pydantic resolves it to every registered kind (finish_registry)
    AnyLayer = LayerSpec


@register
class BlockSpec(LayerSpec):
    """A residual block: ``layers`` run in order, plus ``shortcut`` (``identity`` or layers)."""

    kind: Literal["block"] = "block"
    layer_type = 12
    # "AnyLayer" (every registered kind, this one included) is resolved in finish_registry.
    layers: list[AnyLayer] = Field(min_length=1)
    shortcut: Literal["identity"] | list[AnyLayer] = "identity"

    categorical_domains = {"shortcut_type": (0, len(ShortcutType) - 1)}

    @classmethod
    def finish_registry(cls, registry: dict[str, type[LayerSpec]]) -> None:
        union = Annotated[Union[tuple(registry.values())], Field(discriminator="kind")]  # type: ignore[valid-type]  # noqa: UP007  runtime tuple
        cls.model_rebuild(force=True, _types_namespace={"AnyLayer": union})

    @property
    def shortcut_layers(self) -> list[LayerSpec]:
        return [] if self.shortcut == "identity" else list(self.shortcut)

    def children(self) -> list[tuple[str, LayerSpec]]:
        main = [(f"layers.{i}", layer) for i, layer in enumerate(self.layers)]
        return main + [(f"shortcut.{i}", layer) for i, layer in enumerate(self.shortcut_layers)]

    def output_shape(self, inp: FeatureShape, path: str) -> FeatureShape:
        out = inp
        for i, layer in enumerate(self.layers):
            out = layer.output_shape(out, f"{path}.layers[{i}]")
        short = inp
        for i, layer in enumerate(self.shortcut_layers):
            short = layer.output_shape(short, f"{path}.shortcut[{i}]")
        if (out.kind, out.dims) != (short.kind, short.dims):
            how = "the identity shortcut" if self.shortcut == "identity" else "the shortcut layers"
            raise self.fail(
                f"{path}.shortcut",
                f"{how} give {short.describe()} but the layers give {out.describe()}; "
                "add a projection (e.g. a 1x1 conv2d) as the shortcut",
            )
        return out.with_origin(f"{path} (block)")

    def build_module(self) -> nn.Module:
        return BlockLayer(self)

    def param_meta(self, name: str, shape: tuple[int, ...]) -> ParamMeta:
        raise KeyError(name)  # its parameters belong to its nested layers

    def local_fields(self) -> dict[str, float]:
        kind = ShortcutType.STRAIGHT if self.shortcut == "identity" else ShortcutType.PROJECTION
        return {"shortcut_type": float(kind)}


class BlockLayer(nn.Module):
    def __init__(self, spec: BlockSpec):
        super().__init__()
        self.layers = nn.ModuleList(layer.build_module() for layer in spec.layers)
        self.shortcut = nn.ModuleList(layer.build_module() for layer in spec.shortcut_layers)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        out = x
        for layer in self.layers:
            out = layer(out, ctx)
        short = x
        for layer in self.shortcut:
            short = layer(short, ctx)
        return out + short
