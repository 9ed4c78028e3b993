"""Where dataset files live, where they come from, and the writable cache beside them.

``SOURCES`` is the one table of official sources: the loaders name it in their "missing
file" errors and ``uhn data fetch`` downloads from it. Paths are relative to the data root,
whose layout is that of ``../shared/data`` (``mnist/``, ``cifar10/``,
``planetoid/<Name>/raw``, ``ag_news/``, ``imdb/``).

uhn never writes into a data root (it may be a shared mount, and is the user's): anything
derived from it -- decoded CIFAR images, encoded text -- goes to a per-user cache folder
instead, as safetensors files verified by a checksum at every load (``cached_tensors``).
Planetoid graphs are built from their raw files at every load and are not cached.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from uhn_spec.files import atomic_write

from ..tensor_checksum import tensors_checksum
from .task_data import DataError

PLANETOID_URL = "https://github.com/kimiyoung/planetoid/raw/master/data"
PLANETOID_SUFFIXES = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")
# The Planetoid folder names (as torch_geometric spells them), by dataset name.
PLANETOID_NAMES = {"cora": "Cora", "citeseer": "CiteSeer", "pubmed": "PubMed"}


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset as published, and where it lands under the data root."""

    url: str
    path: str  # relative to the data root
    checksum: str  # "md5:<hex>" or "sha256:<hex>" of the file as downloaded
    # gzip files re-compressed elsewhere keep their content: also accept this digest of
    # the decompressed bytes (MNIST in ../shared/data is such a copy).
    content_checksum: str | None = None
    unpack_to: str | None = None  # archives: folder (relative to the root) to unpack into
    unpack_members: tuple[str, ...] = ()  # only members under these prefixes (empty: all)


@dataclass(frozen=True)
class DatasetSource:
    name: str
    homepage: str  # the official source, named in every "missing file" message
    files: tuple[RemoteFile, ...] = ()
    unavailable: str = ""  # why `uhn data fetch` cannot get it (empty: it can)


def _mnist_file(name: str, md5: str, content_md5: str) -> RemoteFile:
    # The S3 mirror is the one torchvision uses; yann.lecun.com often refuses downloads.
    url = f"https://ossci-datasets.s3.amazonaws.com/mnist/{name}"
    return RemoteFile(url, f"mnist/{name}", f"md5:{md5}", f"md5:{content_md5}")


def _planetoid_files(name: str, md5s: dict[str, str]) -> tuple[RemoteFile, ...]:
    folder = PLANETOID_NAMES[name]
    return tuple(
        RemoteFile(
            f"{PLANETOID_URL}/ind.{name}.{suffix}", f"planetoid/{folder}/raw/ind.{name}.{suffix}", f"md5:{md5s[suffix]}"
        )
        for suffix in PLANETOID_SUFFIXES
    )


SOURCES: dict[str, DatasetSource] = {
    source.name: source
    for source in (
        DatasetSource(
            "mnist",
            "http://yann.lecun.com/exdb/mnist/",
            (
                _mnist_file(
                    "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"
                ),
                _mnist_file(
                    "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"
                ),
                _mnist_file(
                    "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"
                ),
                _mnist_file(
                    "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"
                ),
            ),
        ),
        DatasetSource(
            "cifar10",
            "https://www.cs.toronto.edu/~kriz/cifar.html",
            (
                RemoteFile(
                    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                    "cifar10/cifar-10-python.tar.gz",
                    "md5:c58f30108f718f92721af3b95e74349a",
                ),
            ),
        ),
        # Planetoid digests are those of the original files (as in ../shared/data).
        DatasetSource(
            "cora",
            "https://github.com/kimiyoung/planetoid",
            _planetoid_files(
                "cora",
                {
                    "x": "190831eee19d8f330d89d94b40a65c5a",
                    "tx": "b29c36916768e1d2f55391c1aa9317ac",
                    "allx": "c9083193a57057dd1238321e140194d7",
                    "y": "78344284e3ff7fd24eb9c307d51351eb",
                    "ty": "48bf43f54fa5b86089a4bd0299795f10",
                    "ally": "125d70817fe1fdbfdcad991995e81579",
                    "graph": "b37c419cec179f45834467630c278e4c",
                    "test.index": "9b822cae1d01f41e8bf8782e20367c0e",
                },
            ),
        ),
        DatasetSource(
            "citeseer",
            "https://github.com/kimiyoung/planetoid",
            _planetoid_files(
                "citeseer",
                {
                    "x": "baeb0100b5a8af8d41f928113ce0a4e5",
                    "tx": "c25ab826a7e95c0922ab625de705f7df",
                    "allx": "28486b4b9c4ee076b4eee2febd89ba86",
                    "y": "8b99f50aa950fbbf9a7a2b71ff9cac97",
                    "ty": "356894a73b7a7eff43c3580f2fcf92a4",
                    "ally": "f0df7e5f859245e32987bfd224d01657",
                    "graph": "5f88483d5f5cc2b26b987bbbfb695005",
                    "test.index": "70af39d4dff8aaa5c63f8dc526b16534",
                },
            ),
        ),
        DatasetSource(
            "pubmed",
            "https://github.com/kimiyoung/planetoid",
            unavailable=(
                "no checksums of the PubMed files could be verified here, so uhn does not "
                "download them; place "
                f"ind.pubmed.{{{','.join(PLANETOID_SUFFIXES)}}} from {PLANETOID_URL} under "
                "planetoid/PubMed/raw/ yourself"
            ),
        ),
        DatasetSource(
            # The official source is Xiang Zhang's ag_news_csv archive (Google Drive);
            # these are the same CSVs on the mirror torchtext uses.
            "ag_news",
            "http://groups.di.unipi.it/~gulli/AG_corpus_of_news_articles.html",
            (
                RemoteFile(
                    "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv/train.csv",
                    "ag_news/train.csv",
                    "md5:b1a00f826fdfbd249f79597b59e1dc12",
                ),
                RemoteFile(
                    "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv/test.csv",
                    "ag_news/test.csv",
                    "md5:d52ea96a97a2d943681189a97654912d",
                ),
            ),
        ),
        DatasetSource(
            "imdb",
            "https://ai.stanford.edu/~amaas/data/sentiment/",
            (
                RemoteFile(
                    "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
                    "imdb/aclImdb_v1.tar.gz",
                    "md5:7c2ac02c03563afcf9b574c7e56c153a",
                    # A folder reads much faster than the 84 MB archive, whose unlabelled
                    # reviews and bag-of-words files are not needed.
                    unpack_to="imdb",
                    unpack_members=(
                        "aclImdb/train/pos/",
                        "aclImdb/train/neg/",
                        "aclImdb/test/pos/",
                        "aclImdb/test/neg/",
                    ),
                ),
            ),
        ),
    )
}


def missing_error(dataset: str, root: Path, expected: list[str], what: str = "") -> DataError:
    """The error for absent data: the paths looked for, the official source, the fix."""
    source = SOURCES[dataset]
    looked = " or ".join(str(root / rel) for rel in expected)
    fix = (
        f"download it with `uhn data fetch {dataset} --data-root {root}`"
        if not source.unavailable
        else source.unavailable
    )
    return DataError(
        f"{dataset}: {what or 'data'} not found: expected {looked}. Official source: "
        f"{source.homepage}; {fix}, or point --data-root / $UHN_DATA at a folder that has it"
    )


def first_existing(root: Path, candidates: list[str]) -> Path | None:
    for rel in candidates:
        if (root / rel).exists():
            return root / rel
    return None


def cache_root() -> Path:
    """Writable folder for derived files: $UHN_CACHE, else the per-user cache."""
    if os.environ.get("UHN_CACHE"):
        return Path(os.environ["UHN_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "uhn" / "cache"


def source_key(path: Path) -> str:
    """Identifies a source's version for cache names: a replaced file gets a new key (for a
    folder, adding or removing files does)."""
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}-{stat.st_mtime_ns}"


CACHE_FORMAT = 2  # 2: every file carries the checksum of its tensors
CACHE_CHECKSUM_KEY = "tensors_sha256"


def cached_tensors(
    kind: str, key_parts: list[str], names: tuple[str, ...], build: Callable[[], dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Tensors derived from source files (decoded images, encoded text), built once per
    version of the sources and of the settings in ``key_parts``, then loaded from the cache.

    Loading runs no code (safetensors) and is verified: the file's metadata holds a SHA-256
    of its tensors (names, dtypes, shapes, bytes), written with it and checked at every load,
    and it must hold exactly ``names``. A file that fails (a flipped bit, a truncated write,
    another file put in its place) is rebuilt, with a warning naming it."""
    digest = hashlib.sha256("\n".join([*key_parts, f"cache format {CACHE_FORMAT}"]).encode()).hexdigest()[:20]
    path = cache_root() / kind / f"{digest}.safetensors"
    if path.is_file():
        saved = load_verified(path)
        if saved is not None and set(saved) == set(names):
            return saved
        warnings.warn(
            f"{path}: the cached {kind} data is damaged (it does not match its checksum); rebuilding it", stacklevel=2
        )
    tensors = build()
    try:
        atomic_write(path, lambda tmp: save_verified(tensors, tmp))
    except OSError as err:  # the cache only saves time: a run goes on without it
        warnings.warn(
            f"could not cache {kind} data in {path.parent} ({err}); set UHN_CACHE to a writable folder", stacklevel=2
        )
    return tensors


def save_verified(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """A safetensors file whose metadata holds the checksum ``load_verified`` checks."""
    contiguous = {name: tensor.contiguous() for name, tensor in tensors.items()}
    save_file(contiguous, str(path), metadata={CACHE_CHECKSUM_KEY: tensors_checksum(contiguous)})


def load_verified(path: Path) -> dict[str, torch.Tensor] | None:
    """The tensors of a file ``save_verified`` wrote; None when it cannot be read or its
    tensors do not match the checksum in its metadata."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            recorded = (handle.metadata() or {}).get(CACHE_CHECKSUM_KEY)
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (OSError, SafetensorError):
        return None
    return tensors if recorded == tensors_checksum(tensors) else None
