"""Descriptor layout: the four descriptor vectors of the paper and their normalisation.

Field order and enum ids are those of the authors' code. The authors keep global structure and
task in one 8-field vector; here they are the paper's separate global (6) and task (2)
vectors, and the structure encoder reads each layer as ``[global; task; local]``.
A field a layer does not use is 0 in structure rows and -1 in index rows.

Index rows are never stored one per weight: a target's ``IndexDescriptors`` hold, per
parameter tensor, its constant fields and the grid its dimensions span, from which the rows,
their normalisation ranges and the generator's work units all follow in O(tensors).
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

# Width given to a degenerate range (lo == hi). The authors divide by sqrt(1e-5) there, so a
# value that differs at test time is amplified about 316x. A unit-wide
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
    def of_rows(rows: torch.Tensor) -> Ranges:
        rows = rows.to(torch.float64)
        if rows.shape[0] == 0:
            zeros = torch.zeros(rows.shape[1], dtype=torch.float64)
            return Ranges(zeros, zeros.clone())
        return Ranges(rows.amin(dim=0), rows.amax(dim=0))

    def union(self, other: Ranges) -> Ranges:
        return Ranges(torch.minimum(self.lo, other.lo), torch.maximum(self.hi, other.hi))

    def widen(self, column: int, lo: float, hi: float) -> Ranges:
        new_lo, new_hi = self.lo.clone(), self.hi.clone()
        new_lo[column] = min(float(new_lo[column]), lo)
        new_hi[column] = max(float(new_hi[column]), hi)
        return Ranges(new_lo, new_hi)

    def mean_and_scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and 1/std of U(lo, hi), with the degenerate-range rule (no +1e-5)."""
        width = self.hi - self.lo
        width = torch.where(width > 0, width, torch.full_like(width, DEGENERATE_WIDTH))
        mean = (self.lo + self.hi) / 2
        inv_std = math.sqrt(12.0) / width
        return mean, inv_std

    def normalise(self, rows: torch.Tensor) -> torch.Tensor:
        return normalise(rows, *self.mean_and_scale()).to(torch.float32)

    def to_tensor(self) -> torch.Tensor:
        return torch.stack([self.lo, self.hi], dim=1)

    @staticmethod
    def from_tensor(t: torch.Tensor) -> Ranges:
        t = t.to(torch.float64)
        return Ranges(t[:, 0].clone(), t[:, 1].clone())


def normalise(
    rows: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """The one normalisation of descriptor rows, (x - mean) * inv_std, computed in ``dtype``.
    ``mean`` and ``inv_std`` come from ``Ranges.mean_and_scale`` (the generator keeps them as
    buffers); the compiler, the generator and the naive reference all call this."""
    return (rows.to(dtype) - mean.to(dtype)) * inv_std.to(dtype)


INT16_MAX = torch.iinfo(torch.int16).max
NO_DIM = -1  # dim_fields value of a padding dimension (its size is 1)


@dataclass(frozen=True)
class IndexDescriptors:
    """The index rows of one target, compactly: per parameter tensor (T of them, in the
    order they tile the flat weight vector) its constant fields and the grid it spans.

    Tensor t's rows are the C-order grid over its merged dimensions k = 0..D-1: row
    (i_0, ..., i_{D-1}) is ``constants[t]`` with column ``dim_fields[t, k]`` set to i_k.
    A dimension of size 1 is no dimension here: its field is the constant 0. Shorter lists
    of dimensions are padded with (NO_DIM, size 1). These are the plan's cached index
    descriptors: the rows, their ranges and the generator's work units all follow from them.
    """

    constants: torch.Tensor  # [T, 10] int64: each field's value over the tensor; UNUSED_INDEX where unused or a dim's
    dim_fields: torch.Tensor  # [T, D] int64: index column each merged dimension fills, slowest first
    dim_sizes: torch.Tensor  # [T, D] int64

    @staticmethod
    def of_tensors(tensors: list[tuple[list[int], list[tuple[int, int]]]]) -> IndexDescriptors:
        """From per-tensor (10 constant values, [(column, size)] of its merged dims)."""
        depth = max([len(dims) for _, dims in tensors] + [0])
        constants = torch.tensor([c for c, _ in tensors], dtype=torch.int64).view(len(tensors), len(INDEX_FIELDS))
        fields = torch.full((len(tensors), depth), NO_DIM, dtype=torch.int64)
        sizes = torch.ones((len(tensors), depth), dtype=torch.int64)
        for t, (_, dims) in enumerate(tensors):
            for k, (column, size) in enumerate(dims):
                fields[t, k], sizes[t, k] = column, size
        return IndexDescriptors(constants, fields, sizes)

    @property
    def num_tensors(self) -> int:
        return int(self.constants.shape[0])

    def numels(self) -> torch.Tensor:
        """[T] rows of each tensor."""
        return self.dim_sizes.prod(dim=1)

    def offsets(self) -> torch.Tensor:
        """[T] where each tensor's rows start in the target's flat order."""
        numels = self.numels()
        return torch.cumsum(numels, 0) - numels

    @property
    def num_rows(self) -> int:
        return int(self.numels().sum())

    def dims(self, t: int) -> list[tuple[int, int]]:
        """[(column, size)] of tensor t's merged dimensions, slowest first."""
        return [(int(c), int(s)) for c, s in zip(self.dim_fields[t], self.dim_sizes[t]) if c != NO_DIM]

    def rows_dtype(self) -> torch.dtype:
        """int16 where every index value fits (all plans of the paper), else int32."""
        values = torch.cat([self.constants.flatten(), self.dim_sizes.flatten(), torch.zeros(1, dtype=torch.int64)])
        largest = int(values.max())
        return torch.int16 if largest <= INT16_MAX else torch.int32

    def tensor_rows(self, t: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """[numel, 10] index rows of tensor t in C order."""
        dims = self.dims(t)
        numel = math.prod(size for _, size in dims)
        rows = torch.empty(numel, len(INDEX_FIELDS), dtype=dtype or self.rows_dtype())
        self._fill(t, dims, rows)
        return rows

    def rows(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """[N, 10] index rows of the whole target, one per weight: O(N), built on demand
        (naive generator, tests, ``uhn inspect --rows``), never on the generation path."""
        rows = torch.empty(self.num_rows, len(INDEX_FIELDS), dtype=dtype or self.rows_dtype())
        for t, (offset, numel) in enumerate(zip(self.offsets().tolist(), self.numels().tolist())):
            self._fill(t, self.dims(t), rows[offset : offset + numel])
        return rows

    def _fill(self, t: int, dims: list[tuple[int, int]], rows: torch.Tensor) -> None:
        """Broadcast each field straight into a [*sizes, 10] view: no temporaries of N."""
        rows[:] = self.constants[t].to(rows.dtype)
        if rows.shape[0] == 0:
            return
        grid = rows.view(*(size for _, size in dims), len(INDEX_FIELDS))
        for axis, (column, size) in enumerate(dims):
            along_axis = [1] * len(dims)
            along_axis[axis] = size
            grid[..., column] = torch.arange(size, dtype=rows.dtype).view(along_axis)

    def ranges(self) -> Ranges:
        """Per field [lo, hi] over all rows, from the compact form: a constant field gives its
        value, a dimension's field [0, size - 1]; a tensor with no rows gives nothing."""
        live = self.numels() > 0
        lo = self.constants[live].clone()
        hi = lo.clone()
        fields, sizes = self.dim_fields[live], self.dim_sizes[live]
        tensors = torch.arange(lo.shape[0])
        for k in range(fields.shape[1]):
            real = fields[:, k] != NO_DIM
            lo[tensors[real], fields[real, k]] = 0
            hi[tensors[real], fields[real, k]] = sizes[real, k] - 1
        if lo.shape[0] == 0:
            zeros = torch.zeros(len(INDEX_FIELDS), dtype=torch.float64)
            return Ranges(zeros, zeros.clone())
        return Ranges(lo.amin(dim=0).to(torch.float64), hi.amax(dim=0).to(torch.float64))

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {"constants": self.constants, "dim_fields": self.dim_fields, "dim_sizes": self.dim_sizes}

    @staticmethod
    def from_dict(d: dict[str, torch.Tensor]) -> IndexDescriptors:
        index = IndexDescriptors(d["constants"].long(), d["dim_fields"].long(), d["dim_sizes"].long())
        if index.constants.dim() != 2 or index.constants.shape[1] != len(INDEX_FIELDS):
            raise ValueError(
                f"index constants have shape {tuple(index.constants.shape)}, expected [T, {len(INDEX_FIELDS)}]"
            )
        if index.dim_fields.shape != index.dim_sizes.shape or index.dim_fields.shape[0] != index.num_tensors:
            raise ValueError("index dim_fields and dim_sizes do not match the tensor count")
        return index
