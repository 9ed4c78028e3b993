"""The derived-data cache (decoded CIFAR-10 images, encoded text): loaded without running
code and verified, so a damaged or replaced cache file is rebuilt, never used."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from uhn_runtime.data.files import CACHE_CHECKSUM_KEY, cached_tensors, save_verified

NAMES = ("ids", "labels")


class Builds:
    """The ``build`` callback: counts its calls, returns the same tensors each time."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> dict[str, torch.Tensor]:
        self.calls += 1
        return {"ids": torch.arange(1000, dtype=torch.int32), "labels": torch.tensor([1, 0, 1])}


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("UHN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def cached_file(cache: Path) -> Path:
    (path,) = (cache / "text").glob("*.safetensors")
    return path


def load(build: Builds) -> dict[str, torch.Tensor]:
    return cached_tensors("text", ["source", "settings"], NAMES, build)


def test_a_cached_file_is_loaded_instead_of_rebuilt(cache: Path) -> None:
    build = Builds()
    first = load(build)
    second = load(build)
    assert build.calls == 1 and all(torch.equal(first[k], second[k]) for k in NAMES)


def flip_bit(path: Path, where: str) -> None:
    raw = bytearray(path.read_bytes())
    header_end = 8 + int.from_bytes(raw[:8], "little")
    positions = {
        "data": len(raw) - 5,  # inside the last tensor's bytes
        "checksum": raw.index(CACHE_CHECKSUM_KEY.encode()) + len(CACHE_CHECKSUM_KEY) + 10,
        "shape": raw.index(b'"shape":[') + len('"shape":['),
    }
    assert positions[where] < header_end or where == "data"
    raw[positions[where]] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("where", ["data", "checksum", "shape"])
def test_a_one_bit_flip_is_caught_and_the_cache_rebuilt(cache: Path, where: str) -> None:
    build = Builds()
    expected = load(build)
    flip_bit(cached_file(cache), where)
    with pytest.warns(UserWarning, match="damaged"):
        loaded = load(build)
    assert build.calls == 2 and all(torch.equal(loaded[k], expected[k]) for k in NAMES)
    assert load(build) and build.calls == 2  # the rebuilt file is good again


def test_a_pickle_in_place_of_a_cache_file_runs_nothing(cache: Path, tmp_path: Path) -> None:
    class RunsShell:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {tmp_path / 'MARKER'}",))

    build = Builds()
    load(build)
    cached_file(cache).write_bytes(pickle.dumps({"ids": RunsShell()}))
    with pytest.warns(UserWarning, match="damaged"):
        load(build)
    assert build.calls == 2 and not (tmp_path / "MARKER").exists()


def test_a_checksummed_file_with_other_tensors_is_rebuilt(cache: Path) -> None:
    build = Builds()
    load(build)
    save_verified({"ids": torch.zeros(3, dtype=torch.int32)}, cached_file(cache))  # valid, but not these names
    with pytest.warns(UserWarning, match="damaged"):
        loaded = load(build)
    assert build.calls == 2 and set(loaded) == set(NAMES)
