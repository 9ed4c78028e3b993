"""The 15 special-function regression tasks (KAN targets), generated with scipy.special.

Per function, as in the authors' code: 1,000 training and 1,000 test points, x ~ U[0, 1)^2
except x2 ~ U[0.1, 1) for ``yv`` and ``kv`` (both diverge at z = 0); targets are evaluated on
the raw x and not normalised; then each input is rescaled from its sampling range onto
[-1, 1). ``ellipj`` has 4 outputs (sn, cn, dn, ph), every other function 1.

The points come from a fixed seed per function, not from the run's seed, so every run
(and every seed of a multi-seed result) is tested on the same 1,000 points. The authors
drew them from the run seed, so their test sets differ between seeds.

Spherical harmonics: the authors call ``sph_harm(m, n, x1, x2).real`` -- azimuth x1, polar
angle x2. SciPy 1.15 added ``sph_harm_y(n, m, theta, phi)`` with theta the *polar* angle and
phi the azimuth, and 1.17 removed ``sph_harm``, so the same value is
``sph_harm_y(n, m, x2, x1).real`` (degree n, order m; the names theta/phi swap meanings).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy import special

from uhn_spec.enums import DatasetType
from uhn_spec.spec import TaskSpec
from uhn_spec.tasks import FORMULA_FUNCTIONS

from .splits import train_val_test
from .synthetic import TensorData
from .task_data import DataError, TaskData, register_loader

TRAIN_POINTS = 1000
TEST_POINTS = 1000
FORMULA_DATA_SEED = 0  # combined with the function's dataset id: one fixed sample each
# Input sampling ranges [low, high) of (x1, x2).
DEFAULT_RANGE = ((0.0, 1.0), (0.0, 1.0))
POSITIVE_X2_RANGE = ((0.0, 1.0), (0.1, 1.0))

Formula = Callable[[np.ndarray, np.ndarray], np.ndarray]


def spherical_harmonic_real(m: int, n: int, azimuth: np.ndarray, polar: np.ndarray) -> np.ndarray:
    """Re Y_n^m at (azimuth, polar): the old ``sph_harm(m, n, azimuth, polar).real``."""
    if hasattr(special, "sph_harm_y"):
        return special.sph_harm_y(n, m, polar, azimuth).real
    return special.sph_harm(m, n, azimuth, polar).real  # SciPy < 1.15


def _sph(m: int, n: int) -> Formula:
    return lambda x1, x2: spherical_harmonic_real(m, n, x1, x2)


def _lpmv(m: int) -> Formula:
    return lambda x1, x2: special.lpmv(m, x1, x2)  # order m, degree v = x1, argument x = x2


FORMULAS: dict[str, Formula] = {
    "ellipj": lambda x1, x2: np.stack(special.ellipj(x1, x2), axis=-1),  # sn, cn, dn, ph
    "ellipkinc": special.ellipkinc,  # (phi = x1, m = x2)
    "ellipeinc": special.ellipeinc,
    "jv": special.jv,  # (v = x1, z = x2)
    "yv": special.yv,
    "kv": special.kv,
    "iv": special.iv,
    "lpmv0": _lpmv(0),
    "lpmv1": _lpmv(1),
    "lpmv2": _lpmv(2),
    "sph_harm01": _sph(0, 1),
    "sph_harm11": _sph(1, 1),
    "sph_harm02": _sph(0, 2),
    "sph_harm12": _sph(1, 2),
    "sph_harm22": _sph(2, 2),
}


def input_range(name: str) -> tuple[tuple[float, float], tuple[float, float]]:
    return POSITIVE_X2_RANGE if name in ("yv", "kv") else DEFAULT_RANGE


def sample_points(name: str, count: int) -> np.ndarray:
    """(count, 2) raw inputs of ``name`` from its fixed seed: uniform on its ranges."""
    rng = np.random.default_rng([FORMULA_DATA_SEED, int(DatasetType[name.upper()])])
    low, high = np.array(input_range(name)).T
    return low + (high - low) * rng.random((count, 2))


def evaluate(name: str, raw: np.ndarray) -> np.ndarray:
    """(N, outputs) float64 targets on raw inputs."""
    values = np.asarray(FORMULAS[name](raw[:, 0], raw[:, 1]), dtype=np.float64)
    return values.reshape(len(raw), -1)


def rescale(name: str, raw: np.ndarray) -> np.ndarray:
    """Each input from its sampling range [low, high) onto [-1, 1)."""
    low, high = np.array(input_range(name)).T
    return 2.0 * (raw - low) / (high - low) - 1.0


def formula_points(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(inputs in [-1, 1), targets) of all TRAIN_POINTS + TEST_POINTS points, train first."""
    raw = sample_points(name, TRAIN_POINTS + TEST_POINTS)
    targets = evaluate(name, raw)
    if not np.isfinite(targets).all():
        raise DataError(f"{name}: scipy.special returned non-finite values on the sampled inputs")
    return rescale(name, raw), targets


@register_loader(*FORMULA_FUNCTIONS)
def load_formula(task: TaskSpec, root: Path | None = None) -> TaskData:
    name = task.dataset
    inputs, targets = formula_points(name)
    x = torch.from_numpy(inputs).float()
    y = torch.from_numpy(targets).float()
    splits = train_val_test(
        (x[:TRAIN_POINTS], y[:TRAIN_POINTS]),
        (x[TRAIN_POINTS:], y[TRAIN_POINTS:]),
        DatasetType[name.upper()],
        task.validate_split,
    )
    return TensorData(metric=task.info.metric, splits=splits)
