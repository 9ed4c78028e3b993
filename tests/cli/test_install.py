"""The installed CLI needs nothing from the source tree: a non-editable install into a
temporary folder runs `uhn bench` from a folder outside the repository.

This is CI's check that everything the CLI runs is in the installed packages (setuptools'
``packages`` list in pyproject.toml), not only in the checkout that tests import from.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.tiny_specs import tiny_spec_yaml


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("installed")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(REPO_ROOT)],
        capture_output=True, text=True, timeout=300, cwd=target,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    return target


def run_installed(installed: Path, cwd: Path, *command: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(installed), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def test_installed_cli_runs_outside_the_repository(installed: Path, tmp_path: Path) -> None:
    where = run_installed(installed, tmp_path, sys.executable, "-c", "import uhn_runtime; print(uhn_runtime.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(installed), where.stdout + where.stderr  # not the checkout
    spec = tmp_path / "tiny.yaml"
    spec.write_text(tiny_spec_yaml(epochs=1))
    uhn = str(installed / "bin" / "uhn")
    bench = run_installed(
        installed,
        tmp_path,
        uhn,
        "bench",
        str(spec),
        "--no-naive",
        "--repeats",
        "1",
        "--batch",
        "8",
        "--matmul-size",
        "64",
    )
    assert bench.returncode == 0, bench.stdout + bench.stderr
