"""Shared test configuration: where the real datasets are, and skipping tests that need them.

Mark a test ``@pytest.mark.shared_data`` (or use the ``data_root`` fixture) when it reads the
real datasets; it is skipped, with the reason, where they are absent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from uhn_runtime.cpu_policy import set_reproducible_env

if TYPE_CHECKING:
    import torch

    from uhn_runtime.model.target import DeviceTarget

set_reproducible_env()  # as the CLI does, before torch loads MKL (tests compare thread counts)
# Tests that take 2 threads (tests/runtime/train/test_distributed.py) on a machine other jobs load: spinning
# OpenMP threads cost them 10x there (uhn_runtime/cpu_policy.py); OpenMP reads this once.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402

from uhn_runtime.train.options import StepEvent  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_root() -> Path:
    """``$UHN_DATA`` if set, else ``../shared/data`` next to the repository."""
    env = os.environ.get("UHN_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


SHARED_DATA = shared_data_root()


def _skip_reason() -> str:
    return f"real datasets not found at {SHARED_DATA} (set UHN_DATA to their folder)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=_skip_reason())
    for item in items:
        if item.get_closest_marker("shared_data"):
            item.add_marker(skip)


@pytest.fixture
def data_root() -> Path:
    """The real datasets' folder; skips the test where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(_skip_reason())
    return SHARED_DATA


# --------------------------------------------------------------------------- a finished run


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run, UHN then direct, trained once per test module (copy it before changing it)."""
    import io

    from uhn_runtime.train.run import TrainOptions, start_run

    from .tiny_specs import tiny_plan

    root = tmp_path_factory.mktemp("finished") / "run"
    start_run(tiny_plan(epochs=1, init_steps=1), root, TrainOptions(mode="both", device="cpu", progress=io.StringIO()))
    return root


@pytest.fixture
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    """A copy of the module's finished run that a test may damage."""
    import shutil

    return Path(shutil.copytree(finished_run, tmp_path / "run"))


@pytest.fixture(scope="module")
def exported(finished_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The finished run's generated weights, exported once per test module."""
    import torch

    from uhn_runtime.io.export import export_run
    from uhn_runtime.train.run_dir import RunDir

    path = tmp_path_factory.mktemp("export") / "model.safetensors"
    export_run(RunDir.open(finished_run), path, "uhn", torch.device("cpu"))
    return path


def one_error(args: list[str]) -> str:
    """Run the CLI, expecting exit 2 with exactly one `error:` line and no traceback."""
    from typer.testing import CliRunner

    from uhn_cli.main import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


class RunInterrupted(Exception):
    """A run stopped as a killed one would (``KillAfter``): no checkpoint beyond the last."""


@dataclass(frozen=True)
class KillAfter:
    """A ``TrainOptions.observers`` entry that stops a phase as a kill would once it has
    finished ``units`` epochs (or steps), unless that is its last."""

    units: int

    def after_step(self, event: StepEvent) -> None:
        if event.unit_end and event.units_done >= self.units and not event.last:
            raise RunInterrupted(f"{event.kind}: killed after unit {event.units_done}")


class RecordSteps:
    """A ``TrainOptions.observers`` entry that keeps every step's event."""

    def __init__(self) -> None:
        self.events: list[StepEvent] = []

    def after_step(self, event: StepEvent) -> None:
        self.events.append(event)


def skeleton_flat(target: DeviceTarget) -> torch.Tensor:
    """The target skeleton's own (PyTorch-default) weights as one flat vector in plan order:
    weights to run a target with when the test is not about where they come from."""
    import torch

    params = dict(target.model.named_parameters())
    return torch.cat([params[p.name].detach().reshape(-1) for p in target.plan.params])
