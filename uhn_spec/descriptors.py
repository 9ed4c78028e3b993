"""Descriptor layout: the four descriptor vectors of the paper and their normalisation.

Field order and enum ids follow reference-facts §1. The authors keep global structure and
task in one 8-field vector; here they are the paper's separate global (6) and task (2)
vectors, and the structure encoder reads each layer as ``[global; task; local]``.
A field a layer does not use is 0 in structure rows and -1 in index rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

INDEX_FIELDS: tuple[str, ...] = (
    "layer_idx",
    "layer_type",
    "param_type",
    "output_idx",
    "input_idx",
    "kernel_h_idx",
    "kernel_w_idx",
    "embedding_idx",
    "sequence_idx",
    "grid_idx",
)

GLOBAL_FIELDS: tuple[str, ...] = (
    "model_type",
    "num_layers",
    "cnn_stage_num",
    "num_encoders",
    "num_structure_freqs",
    "num_index_freqs",
)

TASK_FIELDS: tuple[str, ...] = ("task_type", "dataset_type")

LOCAL_FIELDS: tuple[str, ...] = (
    "layer_idx",
    "layer_type",
    "bias_type",
    "norm_type",
    "shortcut_type",
    "output_size",
    "input_size",
    "activation_type",
    "activation_param",
    "dropout_rate",
    "input_pooling_reshape_type",
    "group_num",
    "kernel_size",
    "stage_wise_pooling_type",
    "num_heads",
    "head_concat_type",
    "embedding_num",
    "max_sequence_length",
    "grid_size",
    "spline_order",
    "initialization_type",
)

# One structure row per layer, as the structure encoder reads it.
STRUCTURE_FIELDS: tuple[str, ...] = GLOBAL_FIELDS + TASK_FIELDS + LOCAL_FIELDS

INDEX_COLUMN: dict[str, int] = {name: i for i, name in enumerate(INDEX_FIELDS)}
LOCAL_COLUMN: dict[str, int] = {name: i for i, name in enumerate(LOCAL_FIELDS)}

UNUSED_INDEX = -1
UNUSED_STRUCTURE = 0.0

# Width given to a degenerate range (lo == hi). The authors divide by sqrt(1e-5) there, so a
# value that differs at test time is amplified about 316x (their weak point 2). A unit-wide
# range keeps such a value at the same scale as an in-range one: x - lo.
DEGENERATE_WIDTH = 1.0


@dataclass(frozen=True)
class Ranges:
    """Per-field [lo, hi] ranges used to normalise one kind of descriptor row.

    ``lo`` and ``hi`` are float64 tensors of shape [F]. Normalisation standardises a uniform
    distribution on [lo, hi]: in-range values land in [-sqrt(3), sqrt(3)], values outside
    extrapolate linearly (no clamping), and a degenerate range is treated as unit wide.
    """

    lo: torch.Tensor
    hi: torch.Tensor

    @staticmethod
    def of_rows(rows: torch.Tensor) -> "Ranges":
        rows = rows.to(torch.float64)
        if rows.shape[0] == 0:
            zeros = torch.zeros(rows.shape[1], dtype=torch.float64)
            return Ranges(zeros, zeros.clone())
        return Ranges(rows.amin(dim=0), rows.amax(dim=0))

    def union(self, other: "Ranges") -> "Ranges":
        return Ranges(torch.minimum(self.lo, other.lo), torch.maximum(self.hi, other.hi))

    def widen(self, column: int, lo: float, hi: float) -> "Ranges":
        new_lo, new_hi = self.lo.clone(), self.hi.clone()
        new_lo[column] = min(float(new_lo[column]), lo)
        new_hi[column] = max(float(new_hi[column]), hi)
        return Ranges(new_lo, new_hi)

    def mean_and_scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and 1/std of U(lo, hi), with the degenerate-range rule."""
        width = self.hi - self.lo
        width = torch.where(width > 0, width, torch.full_like(width, DEGENERATE_WIDTH))
        mean = (self.lo + self.hi) / 2
        inv_std = math.sqrt(12.0) / width
        return mean, inv_std

    def normalise(self, rows: torch.Tensor) -> torch.Tensor:
        mean, inv_std = self.mean_and_scale()
        return ((rows.to(torch.float64) - mean) * inv_std).to(torch.float32)

    def to_tensor(self) -> torch.Tensor:
        return torch.stack([self.lo, self.hi], dim=1)

    @staticmethod
    def from_tensor(t: torch.Tensor) -> "Ranges":
        t = t.to(torch.float64)
        return Ranges(t[:, 0].clone(), t[:, 1].clone())
