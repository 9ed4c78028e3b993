"""Embedding layer: token lookup plus a learned positional table -> dropout."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..enums import LayerType
from . import register
from .base import FeatureShape, ForwardContext, LayerSpec, ParamMeta, common_local_fields


@register
class EmbeddingSpec(LayerSpec):
    """Token embedding ``E[x]`` plus learned positions ``P[:, :T]``, then dropout.

    There is no ``padding_idx`` handling (as in the authors' code): PAD tokens get a vector
    like any other token, and attention layers ignore them through the padding mask.
    """

    kind: Literal["embedding"] = "embedding"
    layer_type = LayerType.EMBEDDING
    param_types = {"weight": 0, "position": 1}
    num_embeddings: int = Field(ge=1, description="vocabulary size; must equal task.vocab_size")
    embedding_dim: int = Field(ge=1)
    max_length: int = Field(ge=1, description="length of the positional table (longest sequence)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    positions: bool = Field(True, description="add the learned positional table (off: a plain nn.Embedding)")

    # Uses none of the shared categorical fields (no bias, norm, shortcut or activation).
    categorical_domains = {}

    def output_shape(self, inp: FeatureShape, path: str) -> FeatureShape:
        if inp.kind != "tokens":
            raise self.fail(path, f"an embedding reads token ids, got {inp.describe()} from {inp.origin}")
        if inp.features != self.num_embeddings:
            raise self.fail(
                f"{path}.num_embeddings",
                f"{self.num_embeddings} does not match {inp.origin} ({inp.features}); "
                "set both to the same vocabulary size",
            )
        return FeatureShape("sequence", (self.max_length, self.embedding_dim), f"{path}.embedding_dim")

    def build_module(self) -> nn.Module:
        return EmbeddingLayer(self)

    def param_meta(self, name: str, shape: tuple[int, ...]) -> ParamMeta:
        if name == "weight":
            return ParamMeta(0, ("embedding_idx", "output_idx"), 0.0, 1.0)
        if name == "position":
            # (1, max_length, d): the leading 1 and the positions share sequence_idx, so
            # they flatten into one field; the table starts at zero.
            return ParamMeta(1, ("sequence_idx", "sequence_idx", "output_idx"), 0.0, 0.0)
        raise KeyError(name)

    def local_fields(self) -> dict[str, float]:
        fields = common_local_fields(dropout=self.dropout)
        fields["output_size"] = self.embedding_dim
        fields["input_size"] = 0
        fields["embedding_num"] = self.num_embeddings
        fields["max_sequence_length"] = self.max_length
        return fields


class EmbeddingLayer(nn.Module):
    def __init__(self, spec: EmbeddingSpec):
        super().__init__()
        self.spec = spec
        self.weight = nn.Parameter(torch.empty(spec.num_embeddings, spec.embedding_dim))
        if spec.positions:
            self.position = nn.Parameter(torch.empty(1, spec.max_length, spec.embedding_dim))
        else:
            self.register_parameter("position", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, 0.0, 1.0)
        if self.position is not None:
            nn.init.zeros_(self.position)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        length = x.shape[1]
        if length > self.spec.max_length:
            raise ValueError(
                f"embedding: a sequence of {length} tokens is longer than max_length "
                f"{self.spec.max_length}; truncate inputs to {self.spec.max_length} tokens "
                "or raise max_length in the spec"
            )
        x = F.embedding(x, self.weight)
        if self.position is not None:
            x = x + self.position[:, :length]
        return F.dropout(x, self.spec.dropout, self.training)
