"""Pickled dataset files (CIFAR-10 batches, Planetoid graphs) read without running code.

A pickle runs code by naming a global (a function or class) and calling it. ``load_pickle``
resolves globals only through an allow-list, and every allowed name maps to a *record* of
this module: a plain class that stores what the file hands it and calls nothing. Neither
numpy's nor scipy's reconstruction code sees the file's contents; ``as_array`` then builds a
numpy array from a record's raw bytes (dtype, shape and byte count checked) and a sparse
matrix's arrays are checked index by index before it is densified. Anything else a file
names is refused with one line that names the file and the global.
"""

from __future__ import annotations

import math
import pickle
import re
from collections.abc import Mapping
from typing import IO, Any

import numpy as np

from .task_data import DataError

# Numeric element types only (bool, signed, unsigned, float); never objects or records.
DTYPE_SPEC = re.compile(r"[biuf]\d{1,2}")
BYTE_ORDERS = ("<", ">", "|", "=")
# A dense matrix built from a sparse one: 2**28 float32s is 1 GiB, 20x PubMed's features.
MAX_DENSE_ELEMENTS = 1 << 28
# What a malformed pickle raises inside the unpickler (only records run there, no file code).
UNPICKLING_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    OverflowError,
    MemoryError,
)


def _text(value: object) -> str:
    """A string as Python 2 pickles hand it over: str (encoding='latin1') or bytes."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, str):
        return value
    raise pickle.UnpicklingError(f"expected a string, got {type(value).__name__}")


class DtypeRecord:
    """What ``numpy.dtype(spec, align, copy)`` plus its ``__setstate__`` received."""

    def __init__(self, spec: object, align: object = False, copy: object = False) -> None:
        self.spec = _text(spec)
        try:
            valid = DTYPE_SPEC.fullmatch(self.spec) is not None and np.dtype(self.spec).kind in "biuf"
        except TypeError:  # a size numpy does not have, e.g. 'i3'
            valid = False
        if not valid:
            raise pickle.UnpicklingError(f"element type {self.spec!r} is not a plain number type")
        self.byte_order = "="

    def __setstate__(self, state: object) -> None:
        # (version, byte order, subarray, names, fields, elsize, alignment, flags[, metadata])
        if not isinstance(state, tuple) or len(state) < 5 or any(part is not None for part in state[2:5]):
            raise pickle.UnpicklingError("only plain number element types are allowed, not records or subarrays")
        order = _text(state[1])
        if order not in BYTE_ORDERS:
            raise pickle.UnpicklingError(f"byte order {order!r} is not one of {', '.join(BYTE_ORDERS)}")
        self.byte_order = order

    def resolve(self) -> np.dtype:
        dtype = np.dtype(self.spec)
        return dtype.newbyteorder("<" if self.byte_order == "<" else ">") if self.byte_order in "<>" else dtype


class ArrayRecord:
    """What numpy's array reconstructor and ``ndarray.__setstate__`` received."""

    def __init__(self) -> None:
        self.state: tuple = ()

    def __setstate__(self, state: object) -> None:
        # (version, shape, dtype, is_fortran, raw bytes), or the same without the version
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("an array's state is not (shape, dtype, order, bytes)")
        self.state = state[-4:]

    def resolve(self, where: str) -> np.ndarray:
        if not self.state:
            raise DataError(f"{where}: an array without contents")
        shape, dtype, fortran, raw = self.state
        if not isinstance(dtype, DtypeRecord):
            raise DataError(f"{where}: an array whose element type is not a plain number type")
        if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
            raise DataError(f"{where}: an array shape {shape!r} that is not a tuple of sizes")
        if isinstance(raw, str):
            raw = raw.encode("latin-1")  # Python 2 byte strings arrive as latin-1 text
        if not isinstance(raw, (bytes, bytearray)):
            raise DataError(f"{where}: an array whose contents are not raw bytes")
        element = dtype.resolve()
        count = math.prod(shape)
        if len(raw) != count * element.itemsize:
            expected = count * element.itemsize
            raise DataError(f"{where}: an array of shape {shape} {element} holds {len(raw)} bytes, not {expected}")
        flat = np.frombuffer(raw, dtype=element, count=count)
        return np.array(flat.reshape(shape, order="F" if fortran else "C"))  # a writable copy


class SparseRecord:
    """What ``scipy.sparse.csr_matrix``'s pickled ``__dict__`` held (format, shape, arrays)."""

    def __init__(self) -> None:
        self.state: dict = {}

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("a sparse matrix's state is not a dict")
        self.state = {_text(key): value for key, value in state.items()}

    def resolve(self, where: str) -> np.ndarray:
        """The dense matrix, after checking every index (scipy's own densifying trusts them)."""
        from scipy import sparse  # local: only Planetoid files hold sparse matrices

        fields = self.state
        shape = fields.get("_shape", fields.get("shape"))
        # Python 2's scipy pickled the format too; today's leaves it to the class.
        if _text(fields.get("format", "csr")) != "csr" or not isinstance(shape, tuple) or len(shape) != 2:
            raise DataError(f"{where}: a sparse matrix that is not a 2-d CSR matrix")
        rows, cols = shape
        if not all(type(n) is int and n >= 0 for n in shape) or rows * cols > MAX_DENSE_ELEMENTS:
            raise DataError(f"{where}: a sparse matrix of shape {shape!r}, over {MAX_DENSE_ELEMENTS:,} entries dense")
        data, indices, indptr = (_part(fields.get(name), f"{where}: {name}") for name in ("data", "indices", "indptr"))
        if indices.dtype.kind not in "iu" or indptr.dtype.kind not in "iu" or data.dtype.kind not in "biuf":
            raise DataError(f"{where}: a sparse matrix whose index arrays are not integers")
        try:
            matrix = sparse.csr_matrix((data, indices, indptr), shape=(rows, cols))
            matrix.check_format(full_check=True)  # indices in range, indptr monotone
        except (ValueError, TypeError, IndexError) as err:
            raise DataError(f"{where}: an inconsistent sparse matrix ({err})") from None
        return matrix.toarray()


def _part(value: object, where: str) -> np.ndarray:
    """One of a sparse matrix's three arrays (never another sparse matrix)."""
    if not isinstance(value, ArrayRecord):
        raise DataError(f"{where}: expected an array, found {type(value).__name__}")
    return value.resolve(where)


def _reconstruct(cls: object, shape: object, typecode: object) -> ArrayRecord:
    """numpy's ``_reconstruct(ndarray, (0,), b'b')``: an empty array filled by BUILD."""
    if cls is not ArrayRecord:
        raise pickle.UnpicklingError("numpy's array reconstructor may only build arrays")
    return ArrayRecord()


def _frombuffer(buffer: object, dtype: object, shape: object, order: object) -> ArrayRecord:
    """numpy's protocol-5 form: ``_frombuffer(bytes, dtype, shape, order)``."""
    if isinstance(buffer, pickle.PickleBuffer):
        buffer = bytes(buffer.raw())
    record = ArrayRecord()
    record.__setstate__((shape, dtype, _text(order) == "F", buffer))
    return record


def _new_object(cls: object, base: object = object, state: object = None) -> Any:
    """``copy_reg._reconstructor(cls, object, None)``: a new record of an allowed class."""
    if cls not in (SparseRecord,) or base is not object or state is not None:
        raise pickle.UnpicklingError("copy_reg may only rebuild a sparse matrix")
    return SparseRecord()


def _dict_of_lists(factory: object) -> dict:
    """``collections.defaultdict(list)`` as a plain dict: nothing is ever created on a miss."""
    if factory is not list:
        raise pickle.UnpicklingError("a defaultdict may only default to list")
    return {}


def _both_spellings(module: str, name: str, value: object) -> dict[tuple[str, str], object]:
    """numpy 2 moved ``numpy.core`` to ``numpy._core``; files name either."""
    return {(module, name): value, (module.replace("numpy.core", "numpy._core"), name): value}


NUMPY_ARRAYS: dict[tuple[str, str], object] = {
    **_both_spellings("numpy.core.multiarray", "_reconstruct", _reconstruct),
    **_both_spellings("numpy.core.numeric", "_frombuffer", _frombuffer),
    ("numpy", "ndarray"): ArrayRecord,
    ("numpy", "dtype"): DtypeRecord,
}
SPARSE_MATRICES: dict[tuple[str, str], object] = {
    **{(module, "csr_matrix"): SparseRecord for module in ("scipy.sparse.csr", "scipy.sparse._csr", "scipy.sparse")},
    ("copy_reg", "_reconstructor"): _new_object,  # Python 2 spelling
    ("copyreg", "_reconstructor"): _new_object,
    ("__builtin__", "object"): object,
    ("builtins", "object"): object,
}
DICTS_OF_LISTS: dict[tuple[str, str], object] = {
    ("collections", "defaultdict"): _dict_of_lists,
    ("__builtin__", "list"): list,
    ("builtins", "list"): list,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of ``allowed`` (all records, above)."""

    def __init__(self, stream: IO[bytes], allowed: Mapping[tuple[str, str], object], encoding: str) -> None:
        super().__init__(stream, encoding=encoding)
        self.allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return self.allowed[(module, name)]

    def persistent_load(self, pid: object) -> Any:
        raise pickle.UnpicklingError("persistent references are not allowed")


def load_pickle(
    stream: IO[bytes], where: str, what: str, allowed: Mapping[tuple[str, str], object], encoding: str
) -> Any:
    """The object pickled in ``stream``, built from plain containers and records only.

    ``what`` names the expected content for the error (``a CIFAR-10 python batch``); files
    pickled by Python 2 need ``encoding`` 'latin1' (str keys) or 'bytes' (bytes keys)."""
    try:
        return RestrictedUnpickler(stream, allowed, encoding).load()
    except UNPICKLING_ERRORS as err:
        reason = str(err) or type(err).__name__  # MemoryError: a size field claims more than there is
        raise DataError(f"{where}: not {what} ({reason}); nothing in it was run") from None


def as_array(value: object, where: str) -> np.ndarray:
    """A loaded record as a numpy array (a sparse matrix densified); anything else refused."""
    if isinstance(value, (ArrayRecord, SparseRecord)):
        return value.resolve(where)
    raise DataError(f"{where}: expected an array, found {type(value).__name__}")
