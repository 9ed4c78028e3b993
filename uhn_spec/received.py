"""Reading back the files uhn wrote: bounded, checked, and refused with one line.

A run folder, a plan, a checkpoint or an export may come from another machine, be damaged
on disk or be edited; uhn reads each as data that has to prove its shape before it is used:

* JSON and YAML records (run.json, summary.json, metrics.jsonl, table files) are read from
  regular files only, at most a bounded number of bytes, and a parse error, nesting too deep
  to parse or a huge number is one ``ReceivedFileError`` line naming the file.
* torch files (plans, checkpoints) are zip archives that ``torch.save`` writes uncompressed:
  ``load_torch_file`` refuses an archive whose entries are compressed or claim more bytes than
  the file holds (a small file that would inflate in memory), a file larger than the memory
  guard of ``uhn_spec.budget``, and tensors whose elements add up to more bytes than the file
  (stride-0 or overlapping views that claim billions of rows), before anything uses them.
* ``content_checksum`` is a SHA-256 over everything a file's meaning depends on: every
  tensor's dtype, shape and bytes and every string, number and key around them. Writers
  record it (``with_checksum``) and readers check it (``check_checksum``): a flipped bit or an
  edited field gives "FILE is corrupt or was edited: checksum mismatch".

This module needs no torch at import: the CLI's argument errors stay fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import SpecError, UHNError
from .safe_yaml import parse_yaml

if TYPE_CHECKING:
    import torch

MIB = 2**20
# run.json, summary.json, direct_lr.json: a few KiB each; a family's summary a few hundred.
MAX_RECORD_BYTES = 16 * MIB
# metrics.jsonl: about 150 bytes a log point; a long paper run logs some 10^5 points.
MAX_METRICS_BYTES = 512 * MIB
CHECKSUM_KEY = "checksum"  # where plans and checkpoints keep their content_checksum


class ReceivedFileError(UHNError):
    """A file uhn reads back is unreadable, too large, malformed, damaged or edited."""


def read_received_bytes(path: Path, max_bytes: int, what: str) -> bytes:
    """At most ``max_bytes`` of the regular file ``path``: the one way uhn reads a file it is
    handed (specs, templates, records). It is opened without blocking and checked before any
    byte is read, so a FIFO or device neither blocks nor streams without end."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise ReceivedFileError(f"{what} not found: {path}") from None
    except OSError as err:
        raise ReceivedFileError(f"{path}: cannot read it: {err.strerror or err}") from None
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file (a FIFO, device or socket)"
            raise ReceivedFileError(f"{path}: {kind}; a {what} is a regular file")
        if info.st_size > max_bytes:
            raise ReceivedFileError(f"{path}: {info.st_size} bytes, more than a {what} holds (at most {max_bytes})")
        with os.fdopen(os.dup(descriptor), "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as err:
        raise ReceivedFileError(f"{path}: cannot read it: {err.strerror or err}") from None
    finally:
        os.close(descriptor)
    if len(data) > max_bytes:
        raise ReceivedFileError(f"{path}: grew past {max_bytes} bytes while read; is something writing it?")
    return data


def read_received_text(path: Path, max_bytes: int, what: str) -> str:
    """``read_received_bytes`` as UTF-8 text (a BOM is fine)."""
    data = read_received_bytes(path, max_bytes, what)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ReceivedFileError(f"{path}: byte {err.start}: not UTF-8 text; is it a {what}?") from None


def parse_received_json(text: str, where: str) -> Any:
    """``json.loads`` whose failures (syntax, nesting too deep, a number too long for Python's
    int conversion) are one line naming ``where`` (a file, or "FILE: line N")."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        at = f"line {err.lineno}, column {err.colno}"
        raise ReceivedFileError(f"{where}: not readable JSON: {err.msg} at {at}") from None
    except RecursionError:
        raise ReceivedFileError(f"{where}: not readable JSON: nested too deeply") from None
    except ValueError as err:  # e.g. an integer of more than sys.get_int_max_str_digits() digits
        raise ReceivedFileError(f"{where}: not readable JSON: {str(err).splitlines()[0]}") from None


def load_received_json(path: Path, what: str, max_bytes: int = MAX_RECORD_BYTES) -> Any:
    """A JSON file uhn wrote (``what``: "run record", ...), read within ``max_bytes``."""
    return parse_received_json(read_received_text(path, max_bytes, what), str(path))


def load_received_yaml(path: Path, what: str, max_bytes: int = MAX_RECORD_BYTES) -> Any:
    """A YAML file, read within ``max_bytes`` and parsed by the spec parser (safe loader,
    alias and nesting bounds), its errors one ``ReceivedFileError`` line naming the file."""
    text = read_received_text(path, max_bytes, what)
    try:
        return parse_yaml(text)
    except SpecError as err:
        where = f"{err.path}: " if err.path else ""
        raise ReceivedFileError(f"{path}: {where}{err.message}") from None
    except RecursionError:
        raise ReceivedFileError(f"{path}: invalid YAML: nested too deeply") from None


# ------------------------------------------------------------------------ torch files


def memory_guard() -> tuple[int, str] | None:
    """The bound on what one file may make uhn allocate: compile's memory guard."""
    from .budget import memory_limit

    return memory_limit()


def check_file_size(path: Path, what: str) -> int:
    """The byte size of ``path``, refused when it is over the memory guard: loading a plan,
    checkpoint or export holds all of it in memory."""
    size = path.stat().st_size
    guard = memory_guard()
    if guard is not None and size > guard[0]:
        raise ReceivedFileError(f"{path}: {size} bytes, more than {guard[1]}; is it a {what}?")
    return size


def check_torch_archive(path: Path, what: str) -> int:
    """The byte size of the ``torch.save`` archive ``path``, refused with one line when it is
    larger than the memory guard or its zip entries would inflate past the file's own size
    (compressed entries, or entries that overlap): ``torch.load`` would allocate that much."""
    size = check_file_size(path, what)
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, struct.error) as err:
        raise ReceivedFileError(f"{path}: not a readable {what} (corrupt or truncated?): {err}") from None
    compressed = next((e.filename for e in entries if e.compress_type != zipfile.ZIP_STORED), None)
    if compressed is not None:
        raise ReceivedFileError(
            f"{path}: entry {compressed} is compressed; uhn writes a {what} uncompressed (it would inflate in memory)"
        )
    claimed = sum(e.file_size for e in entries)
    if claimed > size:
        raise ReceivedFileError(
            f"{path}: its entries claim {claimed} bytes, more than the file's {size}; is it a {what}?"
        )
    return size


def load_torch_file(path: Path, what: str) -> Any:
    """``torch.load(weights_only=True)`` of a plan or checkpoint, after ``check_torch_archive``,
    and with its tensors checked to fit the file (``check_tensor_bytes``); every failure is
    one ``ReceivedFileError`` line naming ``path``."""
    import torch

    size = check_torch_archive(path, what)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ReceivedFileError(f"{path}: not a readable {what} (corrupt or truncated?): {reason}") from None
    except RecursionError:
        raise ReceivedFileError(f"{path}: not a {what}: its data is nested too deeply") from None
    except Exception as err:  # weights_only refuses anything that is not plain data
        raise ReceivedFileError(f"{path}: not a {what}: {type(err).__name__}") from None
    check_tensor_bytes(path, loaded, size)
    return loaded


def tensors_in(obj: Any) -> list[tuple[str, torch.Tensor]]:
    """Every tensor inside nested dicts, lists and tuples, with its path (``targets[0].index``)."""
    import torch

    found: list[tuple[str, torch.Tensor]] = []
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, torch.Tensor):
            found.append((where or "(top)", value))
        elif isinstance(value, dict):
            stack.extend((f"{where}.{key}" if where else str(key), item) for key, item in value.items())
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(value))
    return found[::-1]


def check_tensor_bytes(path: Path, obj: Any, file_size: int) -> None:
    """uhn saves each tensor with its own storage, so together they hold no more bytes than
    the file: a view that claims more (stride 0, overlapping strides) is refused before any
    code expands it."""
    total = 0
    for where, tensor in tensors_in(obj):
        total += tensor.numel() * tensor.element_size()
        if total > file_size:
            raise ReceivedFileError(
                f"{path}: tensor {where}: shape {list(tensor.shape)} claims more bytes than the file holds "
                f"({file_size}); the file was edited or is not uhn's"
            )


# ------------------------------------------------------------------------ checksums


def content_checksum(obj: Any) -> str:
    """SHA-256 over ``obj``: nested dicts (keys in order), lists, tuples, strings, numbers,
    booleans, None and tensors (dtype, shape and bytes). Anything else is a bug: TypeError."""
    import torch

    digest = hashlib.sha256()
    stack: list[Any] = [obj]
    while stack:
        value = stack.pop()
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"T{tensor.dtype}{list(tensor.shape)}:".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]  # ndarray is a Buffer; stubs lag
        elif isinstance(value, dict):
            digest.update(f"D{len(value)}:".encode())
            for key, item in reversed(value.items()):
                stack.extend((item, key))  # popped as key, then item, in the dict's order
        elif isinstance(value, (list, tuple)):
            digest.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)}:".encode())
            stack.extend(reversed(value))
        elif isinstance(value, (str, bool, int, float)) or value is None:
            text = repr(value) if not isinstance(value, str) else value
            digest.update(f"{type(value).__name__[0]}{len(text)}:{text}".encode())
        else:
            raise TypeError(f"content_checksum: cannot hash a {type(value).__name__}")
    return digest.hexdigest()


def with_checksum(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with its ``content_checksum`` under CHECKSUM_KEY: what writers save."""
    return {**record, CHECKSUM_KEY: content_checksum(record)}


def check_checksum(path: Path, record: dict[str, Any], fix: str = "restore the file or write it again") -> None:
    """Refuse a file whose recorded checksum does not match its content. A file without one
    was written before uhn recorded them and is accepted as it is."""
    if CHECKSUM_KEY not in record:
        return
    content = {key: value for key, value in record.items() if key != CHECKSUM_KEY}
    try:
        actual: str | None = content_checksum(content)
    except (TypeError, RuntimeError):  # an object uhn never writes (weights_only still built it)
        actual = None
    check_recorded_checksum(path, record[CHECKSUM_KEY], actual, fix)


def check_recorded_checksum(path: Path, recorded: Any, actual: str | None, fix: str) -> None:
    """The one refusal of a checksum mismatch, for every kind of file."""
    if recorded != actual:
        raise ReceivedFileError(
            f"{path} is corrupt or was edited: checksum mismatch (recorded {str(recorded)[:16]}..., "
            f"content {str(actual)[:16]}...); {fix}"
        )


__all__ = [
    "CHECKSUM_KEY",
    "MAX_METRICS_BYTES",
    "MAX_RECORD_BYTES",
    "ReceivedFileError",
    "check_checksum",
    "check_file_size",
    "check_recorded_checksum",
    "check_tensor_bytes",
    "check_torch_archive",
    "content_checksum",
    "load_received_json",
    "load_received_yaml",
    "load_torch_file",
    "parse_received_json",
    "read_received_text",
    "tensors_in",
    "with_checksum",
]
