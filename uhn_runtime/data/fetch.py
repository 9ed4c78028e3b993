"""``uhn data fetch NAME``: download a dataset's official files, verify, unpack.

Opt-in only: loaders never download. Every file has a pinned checksum (``files.SOURCES``);
a download is streamed to a temporary file beside its destination, hashed on the way, and
renamed into place only when the digest matches, so a failed or tampered download never
looks like data. MD5 is what the publishers give for most of these files; it detects
corruption and mirrors serving other content, which is its job here.

Archives are unpacked member by member: only regular files and folders, only relative
paths that stay inside the destination, optionally only members under given prefixes.
Links, devices and paths such as ``../x`` or ``/etc/x`` are refused.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from uhn_spec.files import atomic_write

from .files import SOURCES, DatasetSource, RemoteFile
from .task_data import DataError

CHUNK = 1 << 20
DOWNLOAD_TIMEOUT_S = 60
Log = Callable[[str], None]


def parse_checksum(checksum: str) -> tuple[str, str]:
    algorithm, _, expected = checksum.partition(":")
    if algorithm not in ("md5", "sha256") or not expected:
        raise ValueError(f"checksum {checksum!r} is not 'md5:<hex>' or 'sha256:<hex>'")
    return algorithm, expected.lower()


def digest_of(path: Path, algorithm: str, decompress: bool = False) -> str:
    digest = hashlib.new(algorithm)
    opener = gzip.open if decompress else open
    with opener(path, "rb") as stream:
        while block := stream.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, remote: RemoteFile) -> bool:
    """True when ``path`` is the published file (or, for gzip files, has its content)."""
    algorithm, expected = parse_checksum(remote.checksum)
    if digest_of(path, algorithm) == expected:
        return True
    if remote.content_checksum and path.suffix == ".gz":
        algorithm, expected = parse_checksum(remote.content_checksum)
        try:
            return digest_of(path, algorithm, decompress=True) == expected
        except (OSError, EOFError):
            return False
    return False


def download(url: str, dest: Path, checksum: str) -> Path:
    """Stream ``url`` to ``dest``, keeping it only if its digest is ``checksum``."""
    algorithm, expected = parse_checksum(checksum)

    def write(tmp: Path) -> None:
        digest = hashlib.new(algorithm)
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, tmp.open("wb") as out:
                while block := response.read(CHUNK):
                    digest.update(block)
                    out.write(block)
        except OSError as err:  # URLError, timeouts and refused connections are OSErrors
            raise DataError(f"cannot download {url}: {err}") from None
        if digest.hexdigest() != expected:
            raise DataError(
                f"{url}: {algorithm} is {digest.hexdigest()}, expected {expected}; the download was "
                "discarded (a broken transfer, or the server sent something else)"
            )

    return atomic_write(dest, write)


def safe_member_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise DataError(f"refusing archive member {name!r}: its path leaves the destination")
    return path


def unpack(archive: Path, dest: Path, prefixes: tuple[str, ...] = ()) -> list[Path]:
    """Extract the regular files of a tar archive (any compression) under ``dest``;
    only members under ``prefixes`` when given. Extracts into a temporary folder first and
    then moves each new top-level entry into place, so an interrupted unpack leaves nothing
    half-written; entries already in ``dest`` are kept. Returns the entries moved in."""
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", suffix=".unpacking", dir=dest))
    try:
        try:
            tar = tarfile.open(archive, "r:*")
        except (tarfile.TarError, OSError) as err:
            raise DataError(f"{archive}: cannot open the archive ({err})") from None
        with tar:
            for member in tar:
                path = safe_member_path(member.name)
                if prefixes and not f"{path}/".startswith(prefixes):
                    continue
                if member.isdir():
                    (staging / path).mkdir(parents=True, exist_ok=True)
                elif member.isfile():
                    (staging / path).parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    assert source is not None  # regular files always have a stream
                    with source, (staging / path).open("wb") as out:
                        shutil.copyfileobj(source, out, CHUNK)
                else:
                    raise DataError(f"refusing archive member {member.name!r}: not a regular file or folder")
        moved = []
        for entry in sorted(staging.iterdir()):
            target = dest / entry.name
            if not target.exists():
                entry.rename(target)
                moved.append(target)
        return moved
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch_file(remote: RemoteFile, root: Path, log: Log) -> None:
    dest = root / remote.path
    if dest.exists():
        if not verify(dest, remote):
            raise DataError(
                f"{dest} exists but is not the published file ({remote.checksum}); move it away to download it again"
            )
        log(f"ok       {dest} (checksum verified)")
    else:
        log(f"download {remote.url}")
        download(remote.url, dest, remote.checksum)
        log(f"saved    {dest} (checksum verified)")
    if remote.unpack_to is not None:
        moved = unpack(dest, root / remote.unpack_to, remote.unpack_members)
        for path in moved:
            log(f"unpacked {path}")


def fetch(name: str, root: Path, log: Log = print) -> DatasetSource:
    """Download (or verify) every file of dataset ``name`` under ``root``."""
    source = SOURCES.get(name)
    if source is None:
        raise DataError(
            f"nothing to fetch for {name!r}; fetchable: {', '.join(n for n, s in SOURCES.items() if not s.unavailable)}"
        )
    if source.unavailable:
        raise DataError(f"cannot fetch {name}: {source.unavailable} (source: {source.homepage})")
    for remote in source.files:
        fetch_file(remote, root, log)
    return source
