"""The 15 special-function tasks against SciPy called directly, and their fixed splits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special

from uhn_runtime.data import load_task_data
from uhn_runtime.data.formula import (
    FORMULAS,
    TEST_POINTS,
    TRAIN_POINTS,
    formula_points,
    input_range,
    sample_points,
    spherical_harmonic_real,
)
from uhn_spec.spec import TaskSpec
from uhn_spec.tasks import DATASETS, FORMULA_FUNCTIONS


def authors_sph_harm(m: int, n: int, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """The authors' ``sph_harm(m, n, x1, x2).real``; SciPy >= 1.17 only has ``sph_harm_y``,
    whose (theta, phi) are (polar, azimuth): the old call's (x1, x2) swapped."""
    if hasattr(special, "sph_harm"):
        return special.sph_harm(m, n, x1, x2).real
    return special.sph_harm_y(n, m, x2, x1).real


# What each task computes, written out independently of uhn's table: scipy call on (x1, x2).
SCIPY_CALLS = {
    "ellipj": lambda a, b: np.stack(special.ellipj(a, b), axis=-1),
    "ellipkinc": lambda a, b: special.ellipkinc(a, b),
    "ellipeinc": lambda a, b: special.ellipeinc(a, b),
    "jv": lambda a, b: special.jv(a, b),
    "yv": lambda a, b: special.yv(a, b),
    "kv": lambda a, b: special.kv(a, b),
    "iv": lambda a, b: special.iv(a, b),
    "lpmv0": lambda a, b: special.lpmv(0, a, b),
    "lpmv1": lambda a, b: special.lpmv(1, a, b),
    "lpmv2": lambda a, b: special.lpmv(2, a, b),
    "sph_harm01": lambda a, b: authors_sph_harm(0, 1, a, b),
    "sph_harm11": lambda a, b: authors_sph_harm(1, 1, a, b),
    "sph_harm02": lambda a, b: authors_sph_harm(0, 2, a, b),
    "sph_harm12": lambda a, b: authors_sph_harm(1, 2, a, b),
    "sph_harm22": lambda a, b: authors_sph_harm(2, 2, a, b),
}


def test_the_table_covers_every_formula_task_in_order() -> None:
    assert tuple(FORMULAS) == FORMULA_FUNCTIONS
    assert set(SCIPY_CALLS) == set(FORMULA_FUNCTIONS)


def raw_from_inputs(name: str, inputs: torch.Tensor) -> np.ndarray:
    """Undo the [-1, 1) rescaling with the documented sampling ranges."""
    low, high = np.array(input_range(name)).T
    return low + (inputs.double().numpy() + 1.0) / 2.0 * (high - low)


@pytest.mark.parametrize("name", FORMULA_FUNCTIONS)
def test_targets_equal_scipy_on_the_raw_inputs(name: str) -> None:
    data = load_task_data(TaskSpec(dataset=name))
    outputs = DATASETS[name].num_outputs
    for split, size in (("train", TRAIN_POINTS), ("test", TEST_POINTS)):
        inputs, targets = data.splits[split]
        assert inputs.shape == (size, 2) and inputs.dtype == torch.float32
        assert targets.shape == (size, outputs) and targets.dtype == torch.float32
        assert float(inputs.min()) >= -1.0 and float(inputs.max()) < 1.0
        raw = raw_from_inputs(name, inputs)
        expected = np.asarray(SCIPY_CALLS[name](raw[:, 0], raw[:, 1])).reshape(size, outputs)
        # float32 inputs round the raw points; the functions are smooth on these ranges.
        np.testing.assert_allclose(targets.numpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["yv", "kv"])
def test_yv_and_kv_keep_x2_away_from_their_pole(name: str) -> None:
    raw = sample_points(name, TRAIN_POINTS + TEST_POINTS)
    assert raw[:, 1].min() >= 0.1 and raw[:, 0].min() >= 0.0 and raw.max() < 1.0
    assert raw[:, 1].min() < 0.11  # the whole range [0.1, 1) is used
    other = sample_points("jv", TRAIN_POINTS + TEST_POINTS)
    assert other[:, 1].min() < 0.01


def test_the_inputs_cover_the_unit_square_uniformly() -> None:
    raw = sample_points("jv", 20_000)
    assert abs(raw.mean() - 0.5) < 0.01 and abs(raw.std() - math.sqrt(1 / 12)) < 0.01


def test_spherical_harmonics_match_the_closed_form() -> None:
    """The old ``sph_harm(m, n, azimuth, polar)`` convention, written out by hand
    (Condon-Shortley phase included, as in lpmv)."""
    azimuth, polar = np.meshgrid(np.linspace(0, 1, 7), np.linspace(0, 1, 5))
    closed = {
        (0, 1): 0.5 * np.sqrt(3 / np.pi) * np.cos(polar),
        (1, 1): -0.5 * np.sqrt(3 / (2 * np.pi)) * np.sin(polar) * np.cos(azimuth),
        (0, 2): 0.25 * np.sqrt(5 / np.pi) * (3 * np.cos(polar) ** 2 - 1),
        (1, 2): -0.5 * np.sqrt(15 / (2 * np.pi)) * np.sin(polar) * np.cos(polar) * np.cos(azimuth),
        (2, 2): 0.25 * np.sqrt(15 / (2 * np.pi)) * np.sin(polar) ** 2 * np.cos(2 * azimuth),
    }
    for (m, n), expected in closed.items():
        np.testing.assert_allclose(spherical_harmonic_real(m, n, azimuth, polar), expected, atol=1e-12)


def test_ellipj_has_four_outputs_sn_cn_dn_ph() -> None:
    _, targets = formula_points("ellipj")
    sn, cn, dn, ph = targets.T
    np.testing.assert_allclose(sn**2 + cn**2, 1.0, atol=1e-12)
    np.testing.assert_allclose(np.sin(ph), sn, atol=1e-12)
    assert (dn > 0).all()


def test_points_are_fixed_whatever_the_run_seed() -> None:
    a = load_task_data(TaskSpec(dataset="kv"))
    b = load_task_data(TaskSpec(dataset="kv"))
    for split in ("train", "test"):
        assert torch.equal(a.splits[split][0], b.splits[split][0])
    # ... and differ between functions and between train and test.
    c = load_task_data(TaskSpec(dataset="jv"))
    assert not torch.equal(a.splits["train"][0], c.splits["train"][0])
    assert not torch.equal(a.splits["train"][0], a.splits["test"][0])


def test_validate_split_holds_out_200_of_the_1000_training_points() -> None:
    full = load_task_data(TaskSpec(dataset="iv"))
    held = load_task_data(TaskSpec(dataset="iv", validate_split=True))
    assert [len(held.splits[s][1]) for s in ("train", "val", "test")] == [800, 200, 1000]
    assert torch.equal(held.splits["test"][0], full.splits["test"][0])
    together = torch.cat([held.splits["train"][0], held.splits["val"][0]])
    assert torch.equal(together.sort(dim=0).values, full.splits["train"][0].sort(dim=0).values)
    with pytest.raises(Exception, match="no 'val' split"):
        next(full.eval_batches("val", 1000))


def test_batches_are_full_batch_regression() -> None:
    data = load_task_data(TaskSpec(dataset="ellipj"))
    assert data.metric == "rmse" and data.num_train_batches(1000) == 1
    batch = next(data.train_batches(1000, seed=3))
    assert batch.inputs.shape == (1000, 2) and batch.targets.shape == (1000, 4)
