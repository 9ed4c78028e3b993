"""Every shipped spec validates, compiles, says how to run it, and has the authors' size;
every shipped family validates with the paper's member and unseen counts."""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import REPO_ROOT
from tests.spec.layers.harness import (
    assert_ranges_of_compact_form_equal_those_of_rows,
    check_generation_from_descriptors,
)
from uhn_cli.main import app
from uhn_spec import compile_spec, load_spec
from uhn_spec.modes.family import Family, load_family
from uhn_spec.modes.multitask import compile_multitask, load_multitask
from uhn_spec.modes.recursive import compile_recursive, load_recursive
from uhn_spec.plan import Plan
from uhn_spec.source import file_mode
from uhn_spec.tasks import FORMULA_FUNCTIONS

SPECS_DIR = REPO_ROOT / "specs"
# Files starting with "_" are templates and includes, not runnable specs.
SHIPPED_FILES = sorted(p for p in SPECS_DIR.glob("*.yaml") if not p.name.startswith("_"))
MODES = {p: getattr(file_mode(p), "mode", "single") for p in SHIPPED_FILES}
FAMILIES = [p for p in SHIPPED_FILES if MODES[p] == "family"]
RECURSIVE = [p for p in SHIPPED_FILES if MODES[p] == "recursive"]
MULTITASK = [p for p in SHIPPED_FILES if MODES[p] == "multitask"]
SHIPPED = [p for p in SHIPPED_FILES if MODES[p] == "single"]
# The multi-model families of the interface (issue #11), and the paper's sizes of each.
FAMILY_SIZES: dict[str, tuple[int, int]] = {  # name: (members, unseen)
    "digits_mlp_family": (50, 10),
    "cifar10_cnn_mixed_depth": (100, 20),
    "cifar10_cnn_mixed_width": (500, 50),
    "cifar10_cnn_mixed_depth_width": (1000, 50),
    "agnews_transformer_mixed": (1000, 50),
}

# Parameter counts of the authors' models (reference-facts, paper tables).
AUTHORS_PARAMS: dict[str, int] = {
    "mnist_mlp": 118_282,
    "mnist_cnn8": 74_762,
    "cifar10_cnn20": 269_034,
    "cifar10_cnn32": 463_018,
    "cifar10_cnn44": 657_002,
    "cifar10_cnn56": 850_986,
    "cora_gcn": 92_231,
    "citeseer_gcn": 237_446,
    "cora_gat": 92_373,
    "citeseer_gat": 237_586,
    "imdb_transformer1l": 377_858,
    "agnews_transformer2l": 378_372,
    # KAN-g5 [2, 5, out]: 254 for one output; 4 outputs for ellipj; grid 10 for jv and yv.
    **{f"kan_{fn}": 254 for fn in FORMULA_FUNCTIONS},
    "kan_ellipj": 407,
    "kan_jv": 364,
    "kan_yv": 364,
}


# The descriptors of the paper's specs, pinned: a digest of each compiled plan's global, task
# and local rows, index descriptors, normalisation ranges and parameter table. Taken from the
# tree before the spec language grew (main at 0426c5d^1, before issue 15's new layer kinds and
# blocks) and unchanged since: new kinds and enum ids must leave the authors' descriptors alone.
PAPER_DESCRIPTOR_DIGESTS: dict[str, str] = {
    "agnews_transformer2l": "2a001d511db5ed08",
    "cifar10_cnn20": "1ae0e4f6815b56bf",
    "cifar10_cnn32": "c4d21b0654d7e4b5",
    "cifar10_cnn44": "6c6b5b66efda7604",
    "cifar10_cnn56": "96230a6aea91ecde",
    "citeseer_gat": "7ec003522f145f14",
    "citeseer_gcn": "9a11b798e42b7069",
    "cora_gat": "ee88fa2a8a5372e4",
    "cora_gcn": "616a7457d54ce00d",
    "digits_mlp": "91bb26745e761e9d",
    "imdb_transformer1l": "69e34ad0e80b1992",
    "kan_ellipeinc": "67c50050abc05573",
    "kan_ellipj": "162f566b82376d70",
    "kan_ellipkinc": "9a7086ac5653bd62",
    "kan_iv": "3a0ce956b2aaa748",
    "kan_jv": "d86b75fb6475d7c4",
    "kan_kv": "a792c48d8826e6d4",
    "kan_lpmv0": "43d1951a79aa20d1",
    "kan_lpmv1": "d20d72a3308de8ea",
    "kan_lpmv2": "dd25f8f3d191b221",
    "kan_sph_harm01": "f67041eb177ea183",
    "kan_sph_harm02": "617408ab85c9c260",
    "kan_sph_harm11": "4eae03ca44765909",
    "kan_sph_harm12": "b792d05bcaad6661",
    "kan_sph_harm22": "9d68a36d58169341",
    "kan_yv": "573401da10a6eac8",
    "mnist_cnn8": "af6714c01af85aee",
    "mnist_mlp": "6588b558dab7ce41",
}


def descriptor_digest(plan: Plan) -> str:
    target = plan.targets[0]
    digest = hashlib.sha256()
    tensors = (
        target.global_row,
        target.task_row,
        target.local_rows,
        target.index.constants,
        target.index.dim_fields,
        target.index.dim_sizes,
        plan.index_ranges.to_tensor(),
        plan.structure_ranges.to_tensor(),
    )
    for tensor in tensors:
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.double().contiguous().numpy().tobytes())
    table = [(p.name, list(p.shape), p.param_type, p.init_mean, p.init_std) for p in target.params]
    digest.update(json.dumps(table).encode())
    return digest.hexdigest()[:16]


def ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def test_every_paper_setting_is_shipped() -> None:
    missing = sorted(set(AUTHORS_PARAMS) - {p.stem for p in SHIPPED})
    assert not missing, f"no specs/<name>.yaml for: {', '.join(missing)}"


@pytest.mark.parametrize("path", SHIPPED, ids=ids(SHIPPED))
def test_shipped_spec_validates_and_compiles(path: Path) -> None:
    spec = load_spec(path)
    assert spec.name == path.stem, "a spec's name is its file name, so runs and plans are easy to trace"
    plan = compile_spec(spec)
    target = plan.targets[0]
    assert target.num_params == spec.num_params
    if path.stem in AUTHORS_PARAMS:
        assert target.num_params == AUTHORS_PARAMS[path.stem]
        assert descriptor_digest(plan) == PAPER_DESCRIPTOR_DIGESTS[path.stem], "the authors' descriptors changed"
    assert_ranges_of_compact_form_equal_those_of_rows(target)


# The reference's verified 8-field global descriptors [model_type, task_type, dataset_type,
# num_layers, cnn_stage_num, num_encoders, structure freqs, index freqs] (reference-facts 1.2);
# the plan keeps the task's two fields in ``task_row``.
REFERENCE_GLOBAL_DESCRIPTORS = {"mnist_cnn8": [1, 0, 0, 8, 4, 0, 0, 0], "kan_kv": [5, 3, 12, 2, 0, 0, 0, 0]}


@pytest.mark.parametrize("name", sorted(REFERENCE_GLOBAL_DESCRIPTORS))
def test_paper_spec_global_descriptor_is_the_references(name: str) -> None:
    target = compile_spec(load_spec(SPECS_DIR / f"{name}.yaml")).targets[0]
    model_type, *structure = target.global_row.tolist()
    assert [model_type, *target.task_row.tolist(), *structure] == REFERENCE_GLOBAL_DESCRIPTORS[name]


# Every layer kind: linear, conv2d, gcn, gat, kan, embedding + mha (CNN-20..56 repeat CNN-8's
# kinds at up to 11x the rows: too slow for the default run on 2 cores).
GENERATION_CHECKED = ["digits_mlp", "mnist_cnn8", "cora_gcn", "cora_gat", "kan_ellipj", "imdb_transformer1l"]


@pytest.mark.parametrize("name", GENERATION_CHECKED)
def test_weights_from_compact_descriptors_equal_those_from_index_rows(name: str) -> None:
    check_generation_from_descriptors(compile_spec(load_spec(SPECS_DIR / f"{name}.yaml")))


@cache
def shipped_family(name: str) -> Family:
    """A shipped family, sampled once per test session (the large ones take seconds)."""
    return load_family(SPECS_DIR / f"{name}.yaml")


def test_every_family_is_shipped() -> None:
    assert sorted(p.stem for p in FAMILIES) == sorted(FAMILY_SIZES)


# Sampling renders and validates every member (about 20 ms each here), so the default run
# validates the first PREFIX members of the large families: sampling is sequential, so they
# are exactly the first members of the full family. `uhn validate FAMILY` checks them all.
PREFIX = 50


@pytest.mark.parametrize("path", FAMILIES, ids=ids(FAMILIES))
def test_shipped_family_validates(path: Path) -> None:
    members, unseen = FAMILY_SIZES[path.stem]
    if members <= 2 * PREFIX:
        family = shipped_family(path.stem)
        assert (len(family.members), len(family.unseen)) == (members, unseen)
    else:
        family = load_family(path, [f"count={PREFIX}", "unseen=0", "each=1"])
        assert family.possible is not None and family.possible >= members
    assert family.spec.name == path.stem
    assert all(m.spec.train.epochs for m in family.members)


# The recursive specs of the interface (issue #13): name -> (depth, leaf parameters).
RECURSIVE_SPECS = {
    f"recursive_{leaf}_k{k}": (k, n) for leaf, n in (("mnist", 118_282), ("digits", 26_122)) for k in (1, 2, 3)
}


@pytest.mark.parametrize("path", RECURSIVE, ids=ids(RECURSIVE))
def test_shipped_recursive_spec_compiles_the_papers_chain(path: Path) -> None:
    spec, chain = load_recursive(path)
    assert spec.name == path.stem
    depth, leaf = RECURSIVE_SPECS[path.stem]
    plan = compile_recursive(chain)
    assert plan.recursion_depth == depth
    assert [t.num_params for t in plan.targets] == [181_121] * depth + [leaf]


def test_every_recursive_spec_is_shipped() -> None:
    assert sorted(p.stem for p in RECURSIVE) == sorted(RECURSIVE_SPECS)


def test_shipped_multitask_specs_compile_with_their_members_sizes() -> None:
    assert sorted(p.stem for p in MULTITASK) == ["multitask_demo", "multitask_paper"]
    for path in MULTITASK:
        multitask = load_multitask(path)
        assert multitask.spec.name == path.stem
        plan = compile_multitask(multitask)
        for target in plan.targets:
            if target.name in AUTHORS_PARAMS:
                assert target.num_params == AUTHORS_PARAMS[target.name]


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=ids(SHIPPED_FILES))
def test_shipped_spec_opens_with_how_to_run_it(path: Path) -> None:
    lines = path.read_text().splitlines()
    assert lines and lines[0].startswith("#"), f"{path.name} must open with a comment"
    opening = []
    for line in lines:
        if not line.startswith("#"):
            break
        opening.append(line)
    assert any("uhn " in line for line in opening), f"{path.name}'s opening comment gives no `uhn ...` command"


@pytest.mark.parametrize("name", ["mnist_mlp", "cora_gat", "kan_ellipj"])
def test_inspect_json_reports_the_authors_count(name: str) -> None:
    path = SPECS_DIR / f"{name}.yaml"
    if not path.is_file():
        pytest.fail(f"{path} is missing")
    result = CliRunner().invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    (target,) = json.loads(result.stdout)["targets"]
    assert target["num_params"] == AUTHORS_PARAMS[name]
    assert sum(p["numel"] for p in target["params"]) == AUTHORS_PARAMS[name]
