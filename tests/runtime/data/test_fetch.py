"""`uhn data fetch`: checksums, download and unpacking, offline (file:// URLs, local tars)."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from uhn_runtime.data import DataError
from uhn_runtime.data import fetch as fetch_module
from uhn_runtime.data.fetch import download, fetch, unpack, verify
from uhn_runtime.data.files import SOURCES, DatasetSource, RemoteFile


def md5(data: bytes) -> str:
    return "md5:" + hashlib.md5(data).hexdigest()


def served(tmp_path: Path, name: str, data: bytes) -> str:
    """A file:// URL serving ``data`` (urllib reads it like any download)."""
    path = tmp_path / "server" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path.as_uri()


def test_download_keeps_a_file_whose_checksum_matches(tmp_path: Path) -> None:
    url = served(tmp_path, "a.bin", b"payload")
    dest = download(url, tmp_path / "root" / "sub" / "a.bin", md5(b"payload"))
    assert dest.read_bytes() == b"payload"
    sha = "sha256:" + hashlib.sha256(b"payload").hexdigest()
    assert download(url, tmp_path / "b.bin", sha).read_bytes() == b"payload"


def test_download_discards_a_file_whose_checksum_differs(tmp_path: Path) -> None:
    url = served(tmp_path, "a.bin", b"tampered")
    dest = tmp_path / "root" / "a.bin"
    with pytest.raises(DataError, match="md5 is .*expected .*discarded"):
        download(url, dest, md5(b"payload"))
    assert not dest.exists() and list(dest.parent.iterdir()) == []  # no partial file either


def test_download_reports_an_unreachable_url(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot download"):
        download((tmp_path / "nothing-here").as_uri(), tmp_path / "x", md5(b""))


def test_checksum_strings_are_checked() -> None:
    with pytest.raises(ValueError, match="not 'md5:<hex>'"):
        fetch_module.parse_checksum("crc32:1234")


def test_verify_accepts_a_recompressed_gzip_by_its_content(tmp_path: Path) -> None:
    content = b"idx content" * 100
    published = gzip.compress(content, mtime=0)
    local = tmp_path / "x.gz"
    local.write_bytes(gzip.compress(content, compresslevel=1, mtime=12345))  # other bytes, same content
    remote = RemoteFile("unused", "x.gz", md5(published), md5(content))
    assert verify(local, remote)
    assert not verify(local, RemoteFile("unused", "x.gz", md5(published)))
    local.write_bytes(gzip.compress(b"other content"))
    assert not verify(local, remote)


def make_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
    return path


def test_unpack_extracts_regular_files_and_only_the_wanted_prefixes(tmp_path: Path) -> None:
    archive = make_tar(
        tmp_path / "a.tar.gz",
        [("top/keep/a.txt", b"a"), ("top/keep/sub/b.txt", b"b"), ("top/skip/c.txt", b"c"), ("top/readme", b"r")],
    )
    moved = unpack(archive, tmp_path / "out", prefixes=("top/keep/",))
    assert moved == [tmp_path / "out" / "top"]
    files = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert files == ["top/keep/a.txt", "top/keep/sub/b.txt"]
    assert not any(p.name.endswith(".unpacking") for p in (tmp_path / "out").iterdir())


def test_unpack_keeps_what_is_already_there(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "a.tar.gz", [("top/a.txt", b"new")])
    (tmp_path / "out" / "top").mkdir(parents=True)
    (tmp_path / "out" / "top" / "a.txt").write_bytes(b"old")
    assert unpack(archive, tmp_path / "out") == []
    assert (tmp_path / "out" / "top" / "a.txt").read_bytes() == b"old"


def link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize(
    "member, reason",
    [
        (("../escape.txt", b"x"), "leaves the destination"),
        (("/etc/escape.txt", b"x"), "leaves the destination"),
        (("ok/../../escape.txt", b"x"), "leaves the destination"),
        (link("ok/link", "/etc/passwd", tarfile.SYMTYPE), "not a regular file"),
        (link("ok/hard", "ok/a", tarfile.LNKTYPE), "not a regular file"),
    ],
)
def test_unpack_refuses_unsafe_members_and_leaves_nothing(tmp_path: Path, member: object, reason: str) -> None:
    archive = make_tar(tmp_path / "evil.tar.gz", [("ok/a", b"a"), member])  # type: ignore[list-item]
    out = tmp_path / "out"
    with pytest.raises(DataError, match=reason):
        unpack(archive, out)
    assert list(out.iterdir()) == []
    assert not (tmp_path / "escape.txt").exists()


def test_fetch_downloads_verifies_and_unpacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = make_tar(
        tmp_path / "reviews.tar.gz", [("aclImdb/train/pos/1_9.txt", b"good"), ("aclImdb/unsup/0_0.txt", b"x")]
    )
    data = archive.read_bytes()
    url = served(tmp_path, "reviews.tar.gz", data)
    source = DatasetSource(
        "imdb",
        "https://example.org",
        (RemoteFile(url, "imdb/reviews.tar.gz", md5(data), unpack_to="imdb", unpack_members=("aclImdb/train/",)),),
    )
    monkeypatch.setitem(SOURCES, "imdb", source)
    root, log = tmp_path / "root", []
    fetch("imdb", root, log=log.append)
    assert (root / "imdb" / "aclImdb" / "train" / "pos" / "1_9.txt").read_bytes() == b"good"
    assert not (root / "imdb" / "aclImdb" / "unsup").exists()
    assert log[0].startswith("download") and "verified" in log[1]
    log.clear()
    fetch("imdb", root, log=log.append)  # a second fetch only verifies
    assert log == [f"ok       {root / 'imdb' / 'reviews.tar.gz'} (checksum verified)"]


def test_fetch_never_overwrites_a_different_local_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = served(tmp_path, "f.csv", b"published")
    monkeypatch.setitem(
        SOURCES,
        "ag_news",
        DatasetSource("ag_news", "https://example.org", (RemoteFile(url, "ag_news/f.csv", md5(b"published")),)),
    )
    (tmp_path / "root" / "ag_news").mkdir(parents=True)
    (tmp_path / "root" / "ag_news" / "f.csv").write_bytes(b"my edits")
    with pytest.raises(DataError, match="exists but is not the published file"):
        fetch("ag_news", tmp_path / "root", log=lambda _: None)
    assert (tmp_path / "root" / "ag_news" / "f.csv").read_bytes() == b"my edits"


def test_fetch_explains_what_it_cannot_fetch(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot fetch pubmed: no checksums"):
        fetch("pubmed", tmp_path)
    with pytest.raises(DataError, match="nothing to fetch for 'kv'"):
        fetch("kv", tmp_path)


def test_every_published_file_has_a_checksum_and_a_place_under_the_root() -> None:
    for name, source in SOURCES.items():
        assert source.files or source.unavailable, name
        for remote in source.files:
            algorithm, digest = fetch_module.parse_checksum(remote.checksum)
            assert len(digest) == {"md5": 32, "sha256": 64}[algorithm]
            assert remote.url.startswith("https://") and not Path(remote.path).is_absolute()
            assert remote.path.split("/")[0] in ("mnist", "cifar10", "planetoid", "ag_news", "imdb")
