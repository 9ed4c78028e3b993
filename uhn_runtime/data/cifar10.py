"""CIFAR-10 from ``<root>/cifar10/``, in either of two forms.

* The official python batches: ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz``
  (read straight from the archive). The batches are pickles; they are read with the
  restricted unpickler of ``pickles.py``, which builds nothing but plain containers and
  numpy arrays from raw bytes.
* An image-folder tar (``*.tar``/``*.tar.gz``, e.g. ``cifar10-jpeg.tar.gz`` of
  ../shared/data): ``train/<class>/<name>.jpg|png`` and ``test/<class>/...``. Decoding the
  60,000 images is slow, so the decoded uint8 arrays are cached (safetensors with a
  checksum checked at load, in the writable cache folder) under the archive's path, size
  and mtime, and later runs load those.

Preprocessing, as in the authors' code: per-channel normalisation with mean
(125.3, 123.0, 113.9)/255 and std (63.0, 62.1, 66.7)/255; training batches are augmented
(reflect-pad 4, random crop 32, random horizontal flip).
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import torch

from uhn_spec.enums import DatasetType
from uhn_spec.spec import TaskSpec

from .files import cached_tensors, missing_error, source_key
from .images import ImageData
from .pickles import NUMPY_ARRAYS, as_array, load_pickle
from .splits import train_val_test
from .task_data import DataError, TaskData, register_loader

CIFAR_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SHAPE = (3, 32, 32)
BATCHES_DIR = "cifar-10-batches-py"
OFFICIAL_ARCHIVE = "cifar-10-python.tar.gz"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CACHE_VERSION = 1  # bump when the decoded layout changes

Arrays = tuple[np.ndarray, np.ndarray]  # uint8 (N, 3, 32, 32), int64 (N,)


# --------------------------------------------------------------------------- official batches


def read_batch(stream: IO[bytes], where: str) -> Arrays:
    # The batches were pickled by Python 2: their str keys arrive as bytes.
    batch = load_pickle(stream, where, "a CIFAR-10 python batch", NUMPY_ARRAYS, encoding="bytes")
    if not isinstance(batch, dict) or b"data" not in batch or not isinstance(batch.get(b"labels"), list):
        raise DataError(f"{where}: not a CIFAR-10 python batch (a dict with b'data' and b'labels')")
    data = as_array(batch[b"data"], f"{where}: data")
    if not all(type(label) is int and 0 <= label < len(CLASSES) for label in batch[b"labels"]):
        raise DataError(f"{where}: labels are not whole numbers in 0..9")
    labels = np.array(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != int(np.prod(IMAGE_SHAPE)):
        raise DataError(f"{where}: expected uint8 rows of 3072 pixels, got {data.dtype} {data.shape}")
    if labels.shape != (len(data),) or labels.min(initial=0) < 0 or labels.max(initial=0) >= len(CLASSES):
        raise DataError(f"{where}: labels do not match the {len(data)} images or leave 0..9")
    return data.reshape(-1, *IMAGE_SHAPE), labels


def _concat(parts: list[Arrays]) -> Arrays:
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def read_batches_dir(folder: Path) -> tuple[Arrays, Arrays]:
    def read(name: str) -> Arrays:
        path = folder / name
        if not path.is_file():
            raise DataError(f"{path}: missing from the CIFAR-10 batches folder")
        with path.open("rb") as stream:
            return read_batch(stream, str(path))

    return _concat([read(n) for n in TRAIN_BATCHES]), _concat([read(n) for n in TEST_BATCHES])


def read_batches_archive(archive: Path) -> tuple[Arrays, Arrays]:
    found: dict[str, Arrays] = {}
    with _open_tar(archive) as tar:
        for member in tar:
            name = Path(member.name).name
            if member.isfile() and name in TRAIN_BATCHES + TEST_BATCHES:
                stream = tar.extractfile(member)
                assert stream is not None  # a regular file always has a stream
                found[name] = read_batch(stream, f"{archive}:{member.name}")
    missing = [n for n in TRAIN_BATCHES + TEST_BATCHES if n not in found]
    if missing:
        raise DataError(f"{archive}: missing CIFAR-10 batches {', '.join(missing)}")
    return _concat([found[n] for n in TRAIN_BATCHES]), _concat([found[n] for n in TEST_BATCHES])


# --------------------------------------------------------------------------- image-folder tar


def image_members(tar: tarfile.TarFile) -> Iterator[tuple[str, int, str, tarfile.TarInfo]]:
    """(split, label, file name, member) for each image under ``<split>/<class>/``."""
    for member in tar:
        parts = Path(member.name).parts
        if not member.isfile() or len(parts) < 3 or not parts[-1].lower().endswith(IMAGE_SUFFIXES):
            continue  # folders, READMEs
        split, class_name, file_name = parts[-3], parts[-2], parts[-1]
        if split not in ("train", "test"):
            continue
        if class_name not in CLASSES:
            raise DataError(
                f"{tar.name!s}: {member.name}: {class_name!r} is not a CIFAR-10 class ({', '.join(CLASSES)})"
            )
        yield split, CLASSES.index(class_name), file_name, member


def decode_image(data: bytes, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # local: Pillow is only needed here

    try:
        with Image.open(io.BytesIO(data)) as image:
            pixels = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{where}: cannot decode the image ({err})") from None
    if pixels.shape != (32, 32, 3):
        raise DataError(f"{where}: expected a 32x32 image, got {pixels.shape[1]}x{pixels.shape[0]}")
    return pixels.transpose(2, 0, 1)


def decode_image_tar(archive: Path, limit: int | None = None) -> dict[str, Arrays]:
    """Decode every image (or the first ``limit`` in archive order) into per-split arrays,
    sorted by (class, file name) so the order never depends on how the tar was written."""
    decoded: dict[str, list[tuple[int, str, np.ndarray]]] = {"train": [], "test": []}
    with _open_tar(archive) as tar:
        for count, (split, label, name, member) in enumerate(image_members(tar)):
            if limit is not None and count >= limit:
                break
            stream = tar.extractfile(member)
            assert stream is not None
            decoded[split].append((label, name, decode_image(stream.read(), f"{archive}:{member.name}")))
    result = {}
    for split, items in decoded.items():
        items.sort(key=lambda item: (item[0], item[1]))
        images = np.stack([i[2] for i in items]) if items else np.zeros((0, *IMAGE_SHAPE), np.uint8)
        result[split] = (images, np.array([i[0] for i in items], dtype=np.int64))
    return result


def cached_image_tar(archive: Path) -> tuple[Arrays, Arrays]:
    """The decoded image-folder tar, from the cache when this exact file was decoded before."""

    def decode() -> dict[str, torch.Tensor]:
        splits = decode_image_tar(archive)
        return {
            f"{split}_{part}": torch.from_numpy(array)
            for split, arrays in splits.items()
            for part, array in zip(("x", "y"), arrays)
        }

    names = ("train_x", "train_y", "test_x", "test_y")
    saved = cached_tensors("cifar10", [source_key(archive), f"v{CACHE_VERSION}"], names, decode)
    return ((saved["train_x"].numpy(), saved["train_y"].numpy()), (saved["test_x"].numpy(), saved["test_y"].numpy()))


# --------------------------------------------------------------------------- loader


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as err:
        raise DataError(f"{path}: cannot open the archive ({err}); download it again") from None


def image_folder_tars(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.glob("*.tar*") if p.name != OFFICIAL_ARCHIVE and p.suffix in (".tar", ".gz", ".tgz")
    )


def read_cifar10(root: Path) -> tuple[Arrays, Arrays]:
    """Train and test arrays from the first form present: batches folder, official
    archive, image-folder tar."""
    folder = root / "cifar10"
    if (folder / BATCHES_DIR).is_dir():
        return read_batches_dir(folder / BATCHES_DIR)
    if (folder / OFFICIAL_ARCHIVE).is_file():
        return read_batches_archive(folder / OFFICIAL_ARCHIVE)
    tars = image_folder_tars(folder) if folder.is_dir() else []
    if tars:
        return cached_image_tar(tars[0])
    raise missing_error(
        "cifar10",
        root,
        [f"cifar10/{BATCHES_DIR}/", f"cifar10/{OFFICIAL_ARCHIVE}", "cifar10/<image-folder>.tar.gz"],
        "the CIFAR-10 batches or an image-folder tar",
    )


def _tensors(arrays: Arrays, split: str, expected: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = arrays
    if len(images) != expected:
        raise DataError(f"cifar10 {split}: found {len(images)} images, expected {expected}")
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)


@register_loader("cifar10")
def load_cifar10(task: TaskSpec, root: Path) -> TaskData:
    train, test = read_cifar10(root)
    splits = train_val_test(
        _tensors(train, "train", 50_000), _tensors(test, "test", 10_000), DatasetType.CIFAR10, task.validate_split
    )
    return ImageData(metric=task.info.metric, splits=splits, mean=CIFAR_MEAN, std=CIFAR_STD, augment=True)
