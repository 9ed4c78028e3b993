"""The one way uhn writes a file: a temporary file beside it, then a rename.

A reader never sees a half-written plan, checkpoint, export, run file or cache entry, and a
killed writer leaves at most a hidden ``.<name>.<pid>.<random>.tmp`` behind, which the next
write of the same file removes once that pid has ended (so they do not pile up). The
temporary file is created with mode 0666 minus the umask -- what ``open(path, "w")`` would
give (0644 by default) -- so uhn's files are as readable as any other file the user writes.
``tempfile.mkstemp`` is not used because it always creates files 0600.

A file system that refuses the write (read-only, full, a file-size limit, a path through a
file, a dangling or looping symbolic link) is a ``WriteError``: one line naming the path and
what is wrong, and the file that was there keeps its content. Appends (``append_text``) and
truncation (``truncate_file``) never follow a symbolic link.

This lives in ``uhn_spec`` (which needs no torch at import) so that both the compiler and
the runtime share it.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UHNError

__all__ = [
    "PLAN_SUFFIX",
    "WriteError",
    "append_text",
    "atomic_write",
    "atomic_write_text",
    "ensure_folder",
    "remove_stale_temps",
    "temp_name_pattern",
    "truncate_file",
    "writing",
]

PLAN_SUFFIX = ".pt"  # what names a plan file (``uhn_spec.source``), known without torch
_CREATE_ATTEMPTS = 100
_CHAIN_DEPTH = 8  # how far back through __cause__/__context__ a writer's OSError is looked for
# What an OSError's errno means for a file uhn is writing; others show their strerror.
_WRITE_PROBLEMS = {
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file would pass the file-size limit (ulimit -f)",
    errno.ELOOP: "a symbolic link where uhn writes a file itself, or a link loop; uhn never writes through links",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a file or a symbolic link is in the way of the folder",
    errno.EISDIR: "a folder is in the way of the file",
    errno.ENAMETOOLONG: "the name is too long",
    errno.EIO: "an input/output error of the device",
}
# How a Rust io::Error (safetensors' SafetensorError) ends: "... (os error 28)".
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


class WriteError(UHNError):
    """A file or folder uhn writes cannot be written there: one line naming the path and why."""


def _os_error_in(err: BaseException) -> OSError | None:
    """The OSError behind a writer's failure: ``err`` itself, one it was raised from or during
    (torch.save's "unexpected pos" RuntimeError), or the errno in a Rust writer's message."""
    seen: BaseException | None = err
    for _ in range(_CHAIN_DEPTH):
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno in _WRITE_PROBLEMS:
            return seen
        seen = seen.__cause__ or seen.__context__
    found = _RUST_OS_ERROR.search(str(err))
    if found is None or int(found.group(1)) not in _WRITE_PROBLEMS:
        return None
    code = int(found.group(1))
    return OSError(code, os.strerror(code))


def _write_problem(err: OSError) -> str:
    """What an OSError raised while writing means, in a few words."""
    return _WRITE_PROBLEMS.get(err.errno or 0, err.strerror or str(err))


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn a failure of the file system while writing ``path`` into a ``WriteError`` naming
    the path the system named (else ``path``) and what is wrong (the errnos of
    ``_WRITE_PROBLEMS``); other errors, and uhn's own, pass unchanged."""
    try:
        yield
    except UHNError:
        raise
    except Exception as err:
        cause = _os_error_in(err)
        if cause is None:
            raise
        raise WriteError(f"{_named_path(cause, Path(path))}: cannot write: {_write_problem(cause)}") from None


def _named_path(err: OSError, path: Path) -> str:
    """The path an error while writing ``path`` is about: the one the system named (a folder
    on the way, say), or ``path`` itself for its hidden temporary file."""
    if err.filename is None:
        return str(path)
    named = os.fsdecode(err.filename)
    return str(path) if temp_name_pattern(path).fullmatch(Path(named).name) else named


def ensure_folder(folder: Path) -> None:
    """``folder`` and its parents, made where missing; a dangling or looping symbolic link,
    or a file, in the way is a ``WriteError``."""
    with writing(folder):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            if folder.is_symlink():
                nowhere = "a symbolic link that leads nowhere (dangling or a loop)"
                raise WriteError(f"{folder}: cannot write: {nowhere}") from None
            raise


def temp_name_pattern(path: Path) -> re.Pattern[str]:
    """The names of ``atomic_write``'s temporary files for ``path``; group 1 is the writer's pid."""
    return re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[0-9a-f]{{8}}\.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process; a pid beyond pid_t
        return pid <= 2**31
    return True


def remove_stale_temps(path: Path) -> None:
    """Remove the temporary files a killed writer of ``path`` left beside it (their pid has
    ended); a live writer's, and everything else, stays."""
    pattern = temp_name_pattern(path)
    try:
        names = os.listdir(path.parent)
    except OSError:
        return  # nothing to clean where nothing can be listed; the write itself says what is wrong
    for name in names:
        found = pattern.fullmatch(name)
        if found and int(found.group(1)) != os.getpid() and not _pid_alive(int(found.group(1))):
            try:
                os.unlink(path.parent / name)  # unlink removes a link itself, never its target
            except OSError:
                pass


def _create_temp_beside(path: Path) -> tuple[Path, int]:
    """A new empty file in ``path``'s folder, and the mode it got: 0666 minus the umask."""
    for _ in range(_CREATE_ATTEMPTS):
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        except FileExistsError:
            continue
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        os.close(fd)
        return tmp, mode
    raise FileExistsError(errno.EEXIST, "could not create a temporary file", str(path))


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to fill a temporary file beside ``path``, flush it to disk, then
    rename it over ``path`` (a symbolic link there is replaced, not followed). On any error (or
    Ctrl-C) the temporary file is removed and ``path`` keeps its old content: ``write`` may
    also check what it wrote and raise to keep the old file. ``write`` may reopen or even
    replace ``tmp`` by name (``torch.save``, safetensors' ``save_file``, ``shutil.copyfile``);
    the file ends with the umask's mode all the same. A refusal of the file system is a
    ``WriteError``."""
    path = Path(path)
    ensure_folder(path.parent)
    with writing(path):
        remove_stale_temps(path)
        tmp, mode = _create_temp_beside(path)
        try:
            write(tmp)
            os.chmod(tmp, mode)  # some writers (safetensors) replace the file with a private one
            with open(tmp, "rb") as handle:  # data on disk before the rename makes it visible
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def append_text(path: Path, text: str) -> None:
    """Append ``text`` to ``path`` (created with the umask's mode if missing), never through a
    symbolic link: a link at ``path`` is a ``WriteError``."""
    with writing(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write(text)


def truncate_file(path: Path, size: int) -> None:
    """Cut ``path`` to ``size`` bytes, never through a symbolic link (a ``WriteError``)."""
    with writing(path):
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
