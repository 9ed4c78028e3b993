"""MNIST idx files, CIFAR-10 in both forms, normalisation and the crop/flip augmentation,
on small files made here."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from uhn_runtime.data import DataError, cifar10, load_task_data
from uhn_runtime.data.cifar10 import (
    CIFAR_MEAN,
    CIFAR_STD,
    CLASSES,
    cached_image_tar,
    decode_image_tar,
    read_batches_archive,
)
from uhn_runtime.data.images import ImageData, pad_crop_flip
from uhn_runtime.data.mnist import read_idx
from uhn_spec.spec import TaskSpec


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("UHN_CACHE", str(cache))
    return cache


# --------------------------------------------------------------------------- MNIST idx


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes()
    return header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize("compressed", [False, True])
def test_read_idx_plain_and_gzip(tmp_path: Path, compressed: bool) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("x.gz" if compressed else "x")
    path.write_bytes(gzip.compress(idx_bytes(array)) if compressed else idx_bytes(array))
    np.testing.assert_array_equal(read_idx(path), array)


def test_read_idx_rejects_bad_headers_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)  # float elements
    with pytest.raises(DataError, match="not an unsigned-byte idx"):
        read_idx(path)
    path.write_bytes(idx_bytes(np.zeros((4, 2), np.uint8))[:-1])
    with pytest.raises(DataError, match=r"header says \(4, 2\)"):
        read_idx(path)


def test_mnist_loader_pairs_files_and_normalises(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 3)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        (tmp_path / "mnist").mkdir(exist_ok=True)
        (tmp_path / "mnist" / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
        (tmp_path / "mnist" / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(n) % 10))
    data = load_task_data(TaskSpec(dataset="mnist"), tmp_path)
    batch = next(data.eval_batches("test", 8))
    raw = torch.from_numpy(read_idx(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").copy()).float()
    torch.testing.assert_close(batch.inputs, ((raw / 255 - 0.1307) / 0.3081).unsqueeze(1))
    assert batch.targets.tolist() == [0, 1, 2]


def test_missing_mnist_names_the_path_and_the_fetch_command(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"mnist/train-images-idx3-ubyte\.gz.*uhn data fetch mnist"):
        load_task_data(TaskSpec(dataset="mnist"), tmp_path)


# --------------------------------------------------------------------------- augmentation


def test_pad_crop_flip_gives_reflect_padded_crops_flipped_or_not() -> None:
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    out = pad_crop_flip(images, torch.Generator().manual_seed(0), pad=2)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = F.pad(images.float(), (2, 2, 2, 2), mode="reflect")
    kinds = set()
    for i in range(len(images)):
        found = [
            (top, left, flip)
            for top in range(5)
            for left in range(5)
            for flip in (False, True)
            if torch.equal(
                (lambda c: c.flip(-1) if flip else c)(padded[i, :, top : top + 8, left : left + 8]), out[i].float()
            )
        ]
        assert found, f"image {i} is no flipped/unflipped crop of its reflect-padded self"
        kinds.update(found)
    assert len({k[2] for k in kinds}) == 2 and len({k[:2] for k in kinds}) > 4  # random, both ways


def test_pad_crop_flip_is_seeded() -> None:
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    a = pad_crop_flip(images, torch.Generator().manual_seed(5))
    b = pad_crop_flip(images, torch.Generator().manual_seed(5))
    c = pad_crop_flip(images, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_image_data_augments_training_batches_only() -> None:
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(10)
    data = ImageData(
        metric="accuracy",
        splits={"train": (images, labels), "test": (images, labels)},
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        augment=True,
    )
    test_batch = next(data.eval_batches("test", 10))
    expected = (images.float() / 255 - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(test_batch.inputs, expected)
    train_batch = next(data.train_batches(10, seed=1))
    order = train_batch.targets
    assert not torch.allclose(train_batch.inputs, expected[order])
    assert torch.equal(train_batch.targets.sort().values, labels)


# --------------------------------------------------------------------------- CIFAR-10 batches


def batch_pickle(n: int, offset: int) -> bytes:
    data = (np.arange(n * 3072) + offset).astype(np.uint8).reshape(n, 3072)
    return pickle.dumps({b"batch_label": b"x", b"labels": [i % 10 for i in range(n)], b"data": data}, protocol=4)


def make_batches_archive(path: Path, per_batch: int = 2) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for i, name in enumerate([*cifar10.TRAIN_BATCHES, *cifar10.TEST_BATCHES]):
            payload = batch_pickle(per_batch, i)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def test_official_batches_read_from_the_archive(tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    make_batches_archive(archive)
    (train_x, train_y), (test_x, test_y) = read_batches_archive(archive)
    assert train_x.shape == (10, 3, 32, 32) and test_x.shape == (2, 3, 32, 32)
    assert train_y.tolist() == [0, 1] * 5 and test_y.tolist() == [0, 1]
    # Row layout: 1024 red, then green, then blue values of a 32x32 image.
    assert train_x[0, 1, 0, 0] == 1024 % 256 and train_x[2, 0, 0, 0] == 1


def test_a_batch_pickle_cannot_run_code(tmp_path: Path) -> None:
    class Exploit:
        def __reduce__(self) -> tuple:
            return (os.system, ("echo pwned",))

    payload = pickle.dumps({b"data": Exploit(), b"labels": []})
    with pytest.raises(DataError, match="posix.system is not allowed|os.system is not allowed"):
        cifar10.read_batch(io.BytesIO(payload), "evil")


# --------------------------------------------------------------------------- image-folder tar


def png_bytes(value: int) -> bytes:
    from PIL import Image

    stream = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(stream, format="PNG")
    return stream.getvalue()


def make_image_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def test_image_folder_tar_is_decoded_in_class_then_name_order(tmp_path: Path) -> None:
    archive = tmp_path / "imgs.tar.gz"
    make_image_tar(
        archive,
        [
            ("README.md", b"not an image"),
            ("train/truck/0002.png", png_bytes(9)),
            ("train/airplane/0001.png", png_bytes(1)),
            ("train/airplane/0000.png", png_bytes(0)),
            ("test/cat/0000.png", png_bytes(3)),
        ],
    )
    splits = decode_image_tar(archive)
    train_x, train_y = splits["train"]
    assert train_y.tolist() == [0, 0, CLASSES.index("truck")]
    assert train_x[:, 0, 0, 0].tolist() == [0, 1, 9] and train_x.shape == (3, 3, 32, 32)
    assert splits["test"][1].tolist() == [CLASSES.index("cat")]


def test_image_folder_tar_rejects_unknown_classes_and_odd_sizes(tmp_path: Path) -> None:
    archive = tmp_path / "bad.tar"
    make_image_tar(archive, [("train/unicorn/0.png", png_bytes(1))])
    with pytest.raises(DataError, match="'unicorn' is not a CIFAR-10 class"):
        decode_image_tar(archive)
    from PIL import Image

    stream = io.BytesIO()
    Image.new("RGB", (16, 16)).save(stream, format="PNG")
    make_image_tar(archive, [("train/cat/0.png", stream.getvalue())])
    with pytest.raises(DataError, match="expected a 32x32 image, got 16x16"):
        decode_image_tar(archive)


def test_decoded_images_are_cached_per_archive_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "imgs.tar.gz"
    make_image_tar(archive, [("train/cat/0.png", png_bytes(7)), ("test/dog/0.png", png_bytes(8))])
    first = cached_image_tar(archive)

    def no_decoding(*args: object) -> None:
        raise AssertionError("decoded although the cache holds this archive")

    monkeypatch.setattr(cifar10, "decode_image_tar", no_decoding)
    again = cached_image_tar(archive)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    os.utime(archive, ns=(1, 1))  # a changed file (new mtime) is decoded again
    with pytest.raises(AssertionError, match="decoded although"):
        cached_image_tar(archive)


def test_missing_cifar_lists_the_accepted_forms(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cifar-10-batches-py.*cifar-10-python\.tar\.gz.*uhn data fetch cifar10"):
        load_task_data(TaskSpec(dataset="cifar10"), tmp_path)
