"""The generator's input layer, Linear(2m, d) over Fourier features, without N x 2m features.

The Fourier phase of an index row is a sum over its fields, phase = sum_f x_hat_f B_f, so by
angle addition its phasor exp(i phase) is a product of per-field phasors. The index rows of
one parameter tensor form a grid (C order): every row is (outer key a, inner key b), with a the
leading dimensions plus the constant fields and b the trailing dimensions. Then

    features(a, b) = [cos, sin] of (phase_a + phase_b) = [Re, Im] of P_a * T_b
    h0(a, b)       = Re(P_a * T_b * Wx) + bias      (Wx = W_cos - i W_sin, the Linear's weight)
                   = view_as_real(conj T_b) . view_as_real(P_a * Wx) + bias

so the input Linear over S_a * S_b rows is one GEMM of one side's feature table (S_f rows,
2m wide) against the Linear's weight modulated by the other side's phasors (S_mod x d
columns). The GEMM does the naive Linear's multiply-adds, which are the cost floor. The
feature tables have a few hundred rows each, and tensors of the same shape in different layers
share them; they depend only on buffers (B, normalisation), so they are computed once and
cached until a buffer changes. The modulation side has few keys per unit: its phasors are
computed per unit (a small share of the unit's GEMM). Phases are formed in float64. Nothing
N x 2m exists.

The grids come straight from the plan's compact index descriptors (``IndexDescriptors``, one
per parameter tensor): building the work units is O(tensors + units) Python work and one
vectorised O(N) permutation (unit order -> tensor order), never an analysis of N rows.
Explicit rows (any order a caller may pass) take the same code with one key per row and a
feature table computed per work unit, never cached.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from uhn_spec.descriptors import IndexDescriptors, normalise

# GEMM width: modulation keys per GEMM x d. About 1024 columns keeps MKL near its peak
# while the modulated weight (columns x 2m fp32) stays inside the L3 cache.
GEMM_COLUMNS = 1024
# Largest feature table of one work unit (rows x 2m fp32); bounds memory for fallback rows.
FEATURE_TABLE_BYTES = 32 * 2**20


@dataclass(frozen=True)
class Side:
    """The keys of one side of one or more grids: 10-field rows with only this side's
    fields set (the other side's fields are masked out: they belong to its phase)."""

    values: torch.Tensor  # (S, 10) float64, zero outside the mask
    mask: torch.Tensor  # (10,) float64, 1 where the field belongs to this side
    cached: bool  # a feature table, kept between forwards; else built per unit


@dataclass(frozen=True)
class WorkUnit:
    """A sub-grid: feature keys f0..f1 of one side x modulation keys k0..k1 of another.
    Its rows come in ``unit_row_order``."""

    feature_side: int
    f0: int
    f1: int
    mod_side: int
    k0: int
    k1: int

    @property
    def num_rows(self) -> int:
        return (self.f1 - self.f0) * (self.k1 - self.k0)


@dataclass
class FactoredLayout:
    """How to generate the rows of one target (or of explicit rows): sides, work units, and
    the permutation from the units' concatenated rows back to the target's flat order."""

    sides: list[Side]
    units: list[WorkUnit]
    offsets: list[int]  # where each unit's rows start in the concatenated unit rows
    order: torch.Tensor | None  # out = cat(unit rows)[order]; None: identity
    num_rows: int
    _tables: tuple[tuple, list[torch.Tensor | None]] | None = field(default=None, repr=False)

    def tables(self, basis: FourierBasis) -> list[torch.Tensor | None]:
        """exp(-i phase) of every cached side, (S, m) complex64 (None for the others);
        recomputed only when the basis (B or the normalisation buffers) changes."""
        if self._tables is None or self._tables[0] != basis.key:
            self._tables = (basis.key, [basis.phasors(s.values, s.mask) if s.cached else None for s in self.sides])
        return self._tables[1]

    def side_phasors(
        self, tables: list[torch.Tensor | None], basis: FourierBasis, side: int, lo: int, hi: int
    ) -> torch.Tensor:
        table = tables[side]
        if table is not None:
            return table[lo:hi]
        s = self.sides[side]
        return basis.phasors(s.values[lo:hi], s.mask)


def mod_pieces(num_keys: int, hidden: int) -> list[tuple[int, int]]:
    """The modulation keys of each GEMM: GEMM_COLUMNS // d at a time."""
    step = max(1, GEMM_COLUMNS // hidden)
    return [(k0, min(k0 + step, num_keys)) for k0 in range(0, num_keys, step)]


def unit_row_order(num_features: int, num_keys: int, hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(feature index, key index) of each unit row: piece by piece, and within a piece row
    (f, k) at f * K_p + k -- exactly how each piece's GEMM writes its (S_f, K_p * d) output."""
    feats, keys = [], []
    for k0, k1 in mod_pieces(num_keys, hidden):
        f, k = torch.meshgrid(torch.arange(num_features), torch.arange(k0, k1), indexing="ij")
        feats.append(f.reshape(-1))
        keys.append(k.reshape(-1))
    return torch.cat(feats), torch.cat(keys)


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class _Grid:
    """Rows start..start+S_a*S_b of the target, row (a, b) at start + a * S_b + b. Key
    values outside a side's columns are 0 (they belong to the other side's phase)."""

    start: int
    outer: torch.Tensor  # (S_a, 10) int64
    inner: torch.Tensor  # (S_b, 10) int64
    inner_columns: tuple[int, ...]
    factored: bool  # False: explicit rows, one outer key per row


def build_layout(
    index: IndexDescriptors | torch.Tensor, chunk_rows: int, hidden: int, freqs: int, device: torch.device
) -> FactoredLayout:
    """Sides and work units of at most about ``chunk_rows`` rows each: from a target's
    compact descriptors (each parameter tensor one factored grid; O(tensors) analysis), or
    from explicit (N, 10) rows in any order (one key per row: exact, but no shared tables)."""
    if isinstance(index, IndexDescriptors):
        grids = _descriptor_grids(index)
        n = index.num_rows
    else:
        rows = index.detach().to("cpu", torch.int64)
        grids = (
            [_Grid(0, rows, torch.zeros(1, rows.shape[1], dtype=torch.int64), (), factored=False)] if len(rows) else []
        )
        n = rows.shape[0]
    side_rows: list[tuple[torch.Tensor, torch.Tensor]] = []
    side_cached: list[bool] = []
    side_ids: dict[tuple[bytes, bytes], int] = {}

    def side_id(values: torch.Tensor, mask: torch.Tensor, cached: bool) -> int:
        """Sides with the same masked values have the same phasors: one table serves all
        of them (e.g. the (in, kh, kw) side of every conv with the same input width)."""
        values = values.to(torch.float64) * mask
        key = (values.numpy().tobytes(), mask.numpy().tobytes())
        if key not in side_ids:
            side_ids[key] = len(side_rows)
            side_rows.append((values, mask))
            side_cached.append(False)
        side_cached[side_ids[key]] |= cached
        return side_ids[key]

    units: list[WorkUnit] = []
    positions: list[torch.Tensor] = []
    for grid in grids:
        for unit, unit_positions in _grid_units(grid, side_id, chunk_rows, hidden, freqs):
            units.append(unit)
            positions.append(unit_positions)
    order = None
    if positions:
        flat_positions = torch.cat(positions)
        if not torch.equal(flat_positions, torch.arange(n)):
            order = torch.empty(n, dtype=torch.int64)
            order[flat_positions] = torch.arange(n)
            order = order.to(device)
    offsets = [0]
    for unit in units[:-1]:
        offsets.append(offsets[-1] + unit.num_rows)
    sides = [Side(v.to(device), m.to(device), c) for (v, m), c in zip(side_rows, side_cached)]
    return FactoredLayout(sides, units, offsets, order, n)


def _descriptor_grids(index: IndexDescriptors) -> list[_Grid]:
    """One grid per parameter tensor with rows: outer keys = its constant fields x its
    leading merged dimensions, inner keys = its trailing ones (``_balanced_split``)."""
    grids = []
    for t, (start, numel) in enumerate(zip(index.offsets().tolist(), index.numels().tolist())):
        if numel == 0:
            continue
        dims = index.dims(t)
        split = _balanced_split([size for _, size in dims])
        outer = _grid_keys(index.constants[t], dims[:split], [column for column, _ in dims[split:]])
        inner = _grid_keys(torch.zeros_like(index.constants[t]), dims[split:], [])
        grids.append(_Grid(start, outer, inner, tuple(column for column, _ in dims[split:]), factored=True))
    return grids


def _grid_keys(base: torch.Tensor, dims: list[tuple[int, int]], zeroed: list[int]) -> torch.Tensor:
    """(prod sizes, 10): ``base`` with each dim's column running over its size in C order
    and the ``zeroed`` columns (the other side's) set to 0."""
    sizes = [size for _, size in dims]
    keys = base.to(torch.int64).repeat(math.prod(sizes), 1)
    keys[:, zeroed] = 0
    if dims:
        grid = keys.view(*sizes, keys.shape[1])
        for axis, (column, size) in enumerate(dims):
            along_axis = [1] * len(dims)
            along_axis[axis] = size
            grid[..., column] = torch.arange(size).view(along_axis)
    return keys


def _balanced_split(sizes: list[int]) -> int:
    """Split the grid's dimensions into outer (leading) and inner (trailing) so that the
    smaller side is as large as possible: the larger side gives the GEMM's rows and the
    smaller one its columns (x d), both then wide enough to run near the GEMM peak, while the
    side tables stay small."""
    best, best_score = 0, -1
    for split in range(len(sizes) + 1):
        score = min(math.prod(sizes[:split]), math.prod(sizes[split:]))
        if score > best_score:
            best, best_score = split, score
    return best


def _grid_units(
    grid: _Grid, side_id: Callable[[torch.Tensor, torch.Tensor, bool], int], chunk_rows: int, hidden: int, freqs: int
) -> Iterator[tuple[WorkUnit, torch.Tensor]]:
    """Cut a grid into work units: the larger side supplies the features, the smaller side
    the modulations; each unit holds at most ~chunk_rows rows (at least one key per side).
    Yields each unit with the tensor positions of its rows."""
    s_a, s_b = grid.outer.shape[0], grid.inner.shape[0]
    inner_mask = torch.zeros(grid.outer.shape[1], dtype=torch.float64)
    inner_mask[list(grid.inner_columns)] = 1.0
    outer_mask = 1.0 - inner_mask
    outer_is_feature = s_a > s_b
    # Feature tables are cached: they are the larger side, and the cos/sin of a whole
    # table would cost a noticeable share of each unit's GEMM. Modulation keys are few per
    # unit, so their phasors are computed per unit (a small share of the GEMM), and rows of a
    # fallback segment (one key per row) are never cached: that would be N x 2m.
    outer = side_id(grid.outer, outer_mask, grid.factored and outer_is_feature)
    inner = side_id(grid.inner, inner_mask, not outer_is_feature)
    feat_side, mod_side = (outer, inner) if outer_is_feature else (inner, outer)
    s_f, s_k = (s_a, s_b) if outer_is_feature else (s_b, s_a)
    feat_step = max(1, min(s_f, chunk_rows, FEATURE_TABLE_BYTES // (8 * freqs)))
    mod_step = max(1, min(s_k, chunk_rows // feat_step))
    gemm_keys = max(1, GEMM_COLUMNS // hidden)
    if mod_step > gemm_keys:  # whole GEMMs per unit: no narrow leftover piece in each
        mod_step -= mod_step % gemm_keys
    for f0 in range(0, s_f, feat_step):
        f1 = min(f0 + feat_step, s_f)
        for k0 in range(0, s_k, mod_step):
            k1 = min(k0 + mod_step, s_k)
            f_local, k_local = unit_row_order(f1 - f0, k1 - k0, hidden)
            f, k = f_local + f0, k_local + k0
            a, b = (f, k) if outer_is_feature else (k, f)
            yield WorkUnit(feat_side, f0, f1, mod_side, k0, k1), grid.start + a * s_b + b


# --------------------------------------------------------------------------- the math


@dataclass(frozen=True)
class FourierBasis:
    """The encoder's normalisation and frequency matrix in float64, and a key that changes
    whenever one of the buffers they come from does."""

    mean: torch.Tensor  # (10,)
    inv_std: torch.Tensor  # (10,)
    B: torch.Tensor  # (10, m)
    key: tuple

    @staticmethod
    def of(mean: torch.Tensor, inv_std: torch.Tensor, B: torch.Tensor) -> FourierBasis:
        key = tuple((t.data_ptr(), t._version, t.device, t.dtype, t.shape) for t in (mean, inv_std, B))
        return FourierBasis(mean.double(), inv_std.double(), B.double(), key)

    def phasors(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """exp(-i phase) of the masked fields' share of each row's phase, (S, m) complex64,
        computed in float64 (fp32 phases of up to ~1800 rad carry ~1e-4 rad of rounding)."""
        phase = (normalise(values, self.mean, self.inv_std) * mask) @ self.B
        return torch.complex(torch.cos(phase), torch.sin(phase).neg_()).to(torch.complex64)


def complex_weight(weight: torch.Tensor) -> torch.Tensor:
    """Wx = W_cos - i W_sin, (1, d, m) complex64, from the Linear's (d, 2m) weight [cos | sin]."""
    m = weight.shape[1] // 2
    return torch.complex(weight[:, :m].float(), weight[:, m:].float().neg()).unsqueeze(0)


def gemm_dtype(device: torch.device) -> torch.dtype:
    """The matmuls' dtype: the autocast dtype where autocast is on, else fp32. Phases and
    cos/sin are float64/fp32 whatever this says."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return torch.float32


class Workspace:
    """Buffers that the work units of one forward (and of its backward) take turns using.
    Allocating tens of MB per unit instead costs page faults on every unit and fragments
    the heap: the resident set then grows to several times the memory actually live.

    A buffer is bytes, viewed as whatever dtype the taker asks for: uses under one name must
    never overlap in time, whatever their dtypes (``GEMM_SCRATCH`` serves the forward's
    modulated weight and the backward's gradient columns, one at a time)."""

    def __init__(self, device: torch.device):
        self.device = device
        self._buffers: dict[str, torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        nbytes = math.prod(shape) * dtype.itemsize
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < nbytes:
            buffer = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
            self._buffers[name] = buffer
        return buffer[:nbytes].view(dtype).view(shape)


# The workspace buffer of each piece's GEMM operand: the modulated weight in the forward,
# the weight-gradient columns in the backward (same size: K_p * d x 2m floats). Within one
# unit's backward the recomputed forward has finished with it before the gradient needs it.
GEMM_SCRATCH = "gemm_columns"


@dataclass(frozen=True)
class UnitContext:
    """What one forward shares across its work units: the layout, the basis and its side
    tables, a workspace, and where each unit's input-Linear output goes."""

    layout: FactoredLayout
    basis: FourierBasis
    tables: list[torch.Tensor | None]
    workspace: Workspace
    # Where unit outputs go: slices of one (N, d) tensor kept for the backward, or (None)
    # one reused workspace buffer, consumed before the next unit runs.
    h0_store: torch.Tensor | None = None

    def features(self, unit: WorkUnit) -> torch.Tensor:
        """(S_f, 2m) fp32: [cos, -sin] interleaved per frequency, view_as_real(conj T)."""
        phasors = self.layout.side_phasors(self.tables, self.basis, unit.feature_side, unit.f0, unit.f1)
        return torch.view_as_real(phasors).flatten(1)

    def conj_mod_phasors(self, unit: WorkUnit) -> torch.Tensor:
        """(K, 1, m) complex64: conj(P) = exp(-i phase) of the modulation keys."""
        return self.layout.side_phasors(self.tables, self.basis, unit.mod_side, unit.k0, unit.k1).unsqueeze(1)

    def fp32(self, tensor: torch.Tensor, buffer: str) -> torch.Tensor:
        """``tensor`` in fp32 (itself if it is): a low-precision GEMM's output converted in a
        reused workspace buffer. ``.float()`` allocates tens of MB per work unit instead, and
        the page faults of that allocation cost more than the conversion itself
        (docs/performance.md)."""
        if tensor.dtype == torch.float32:
            return tensor
        return self.workspace.take(buffer, tuple(tensor.shape), torch.float32).copy_(tensor)

    def h0_buffer(self, index: int, hidden: int, dtype: torch.dtype) -> torch.Tensor:
        rows = self.layout.units[index].num_rows
        if self.h0_store is None or self.h0_store.dtype != dtype:
            return self.workspace.take("h0", (rows, hidden), dtype)
        # An alias of the unit's rows of the store, not a view: views share their base's
        # version counter, so writing the next unit's rows would look like an in-place
        # change of this unit's saved output.
        start = self.h0_store.storage_offset() + self.layout.offsets[index] * hidden
        alias = torch.empty(0, dtype=dtype, device=self.h0_store.device)
        return alias.set_(self.h0_store.untyped_storage(), start, (rows, hidden), (hidden, 1))


def unit_forward(ctx: UnitContext, index: int, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """h0 of work unit ``index``, (S_f * K, d) in ``unit_row_order``, without autograd."""
    unit = ctx.layout.units[index]
    d = weight.shape[0]
    dtype = gemm_dtype(weight.device)
    features = ctx.features(unit).to(dtype)
    phasors = ctx.conj_mod_phasors(unit).conj()
    wx = complex_weight(weight)
    s_f, num_keys = features.shape[0], phasors.shape[0]
    out = ctx.h0_buffer(index, d, dtype)
    pieces = mod_pieces(num_keys, d)
    modulated = ctx.workspace.take(GEMM_SCRATCH, (pieces[0][1], d, wx.shape[-1]), torch.complex64)
    bias = bias.to(dtype)
    for k0, k1 in pieces:
        buf = modulated[: k1 - k0]
        torch.mul(phasors[k0:k1], wx, out=buf)
        columns = torch.view_as_real(buf).view((k1 - k0) * d, -1).to(dtype)
        rows = out[s_f * k0 : s_f * k1].view(s_f, (k1 - k0) * d)
        torch.addmm(bias.repeat(k1 - k0), features, columns.t(), out=rows)
    return out


def unit_weight_grad(
    ctx: UnitContext, index: int, grad_out: torch.Tensor, hidden: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the input Linear's (weight, bias) from the gradient of unit ``index``'s h0.

    The features need no gradient (descriptors are constants), so only the weight gradient
    is formed: G_k = g^T @ features per modulation piece, then sum_k conj(P_k) * G_k."""
    unit = ctx.layout.units[index]
    d = hidden
    dtype = grad_out.dtype
    features = ctx.features(unit).to(dtype)
    conj_phasors = ctx.conj_mod_phasors(unit)
    s_f, num_keys, m = features.shape[0], conj_phasors.shape[0], features.shape[1] // 2
    grad_wx = torch.zeros(d, m, dtype=torch.complex64, device=grad_out.device)
    pieces = mod_pieces(num_keys, d)
    g_buf = ctx.workspace.take(GEMM_SCRATCH, (pieces[0][1] * d, 2 * m), dtype)
    for k0, k1 in pieces:
        g = grad_out[s_f * k0 : s_f * k1].view(s_f, (k1 - k0) * d)
        g_cols = ctx.fp32(torch.mm(g.t(), features, out=g_buf[: (k1 - k0) * d]), "grad_columns_fp32")
        g_cols = torch.view_as_complex(g_cols.view(k1 - k0, d, m, 2))
        g_cols.mul_(conj_phasors[k0:k1])
        grad_wx += g_cols.sum(dim=0)
    grad_weight = torch.cat([grad_wx.real, grad_wx.imag.neg()], dim=1)
    return grad_weight, ctx.fp32(grad_out, "grad_h0_fp32").sum(dim=0)
