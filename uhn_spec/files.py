"""The one way uhn writes a file: a temporary file beside it, then a rename.

A reader never sees a half-written plan, checkpoint, export, run file or cache entry, and a
killed writer leaves at most a hidden ``.<name>.<random>.tmp`` behind. The temporary file is
created with mode 0666 minus the umask -- what ``open(path, "w")`` would give (0644 by
default) -- so uhn's files are as readable as any other file the user writes.
``tempfile.mkstemp`` is not used because it always creates files 0600.

This lives in ``uhn_spec`` (which needs no torch at import) so that both the compiler and
the runtime share it.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_text"]

_CREATE_ATTEMPTS = 100


def _create_temp_beside(path: Path) -> tuple[Path, int]:
    """A new empty file in ``path``'s folder, and the mode it got: 0666 minus the umask."""
    for _ in range(_CREATE_ATTEMPTS):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        os.close(fd)
        return tmp, mode
    raise FileExistsError(f"could not create a temporary file beside {path}")


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to fill a temporary file beside ``path``, flush it to disk, then
    rename it over ``path``. On any error (or Ctrl-C) the temporary file is removed and
    ``path`` keeps its old content. ``write`` may reopen or even replace ``tmp`` by name
    (``torch.save``, safetensors' ``save_file``, ``shutil.copyfile``); the file ends with
    the umask's mode all the same."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
