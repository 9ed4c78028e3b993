"""Family files: seeded sampling, deduplication, the seen/unseen split, their errors, the
paper's families (reference-facts section 9) and compiling a family into one plan."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from tests.conftest import REPO_ROOT
from tests.spec.test_shipped_specs import shipped_family
from uhn_cli.main import app
from uhn_runtime.model.generator import count_generator_params
from uhn_spec import SpecError, compile_spec, load_plan, load_spec
from uhn_spec.modes.family import FamilySpec, count_space, draw_variables, family_from_text, load_family, render_member
from uhn_spec.source import file_mode

SPECS_DIR = REPO_ROOT / "specs"

# A tiny MLP on synthetic data: width 4..12 step 2 (5 values) x activation (2) = 10 architectures.
TEMPLATE = """\
family: mlp
task:
  dataset: synthetic
  synthetic: {task_type: image_classification, input_dims: [1, 4, 4], num_outputs: 3}
layers:
  - {kind: linear, in_features: 16, out_features: {{ width }}, input_pooling: reshape_to_2d}
  - {kind: linear, in_features: {{ width }}, out_features: 3, activation: {{ act }}}
generator: {index_freqs: 16, hidden: 16, blocks: 1}
"""


def family_data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "tiny",
        "count": 6,
        "unseen": 2,
        "seed": 3,
        "sample": {"width": {"min": 4, "max": 12, "step": 2}, "act": {"choice": ["elu", "silu"], "p": [0.5, 0.5]}},
        "template": TEMPLATE,
    }
    data.update(changes)
    return data


def write_family(tmp_path: Path, **changes: Any) -> Path:
    path = tmp_path / "tiny_family.yaml"
    path.write_text(yaml.safe_dump(family_data(**changes), sort_keys=False))
    return path


def drawn(path: Path) -> list[tuple[str, dict[str, Any]]]:
    return [(m.name, m.variables) for m in load_family(path).members]


# --------------------------------------------------------------------------- sampling


def test_same_file_gives_the_same_members_whatever_the_global_rng(tmp_path: Path) -> None:
    path = write_family(tmp_path)
    first = drawn(path)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    torch.rand(5), np.random.rand(5), random.random()
    assert drawn(path) == first
    # Sampling leaves the global generators where they were.
    state = torch.get_rng_state(), random.getstate()
    load_family(path)
    assert torch.equal(torch.get_rng_state(), state[0]) and random.getstate() == state[1]


def test_the_members_of_a_seed_are_pinned(tmp_path: Path) -> None:
    """Python promises random.Random(seed).random() across versions and machines; this pins
    the sampler built on it, so a change to the draw order shows here."""
    assert [v for _, v in drawn(write_family(tmp_path))] == [
        {"width": 6, "act": "silu"},
        {"width": 10, "act": "elu"},
        {"width": 4, "act": "silu"},
        {"width": 6, "act": "elu"},
        {"width": 12, "act": "elu"},
        {"width": 10, "act": "silu"},
    ]
    assert drawn(write_family(tmp_path, seed=4)) != drawn(write_family(tmp_path, seed=3))


def test_a_smaller_count_gives_the_first_members(tmp_path: Path) -> None:
    assert drawn(write_family(tmp_path, count=3, unseen=1)) == drawn(write_family(tmp_path))[:3]


def test_members_are_distinct_architectures_named_in_order(tmp_path: Path) -> None:
    family = load_family(write_family(tmp_path, count=10, unseen=0))
    assert [m.name for m in family.members] == [f"tiny_{i:04d}" for i in range(10)]
    layers = {json.dumps([layer.model_dump(mode="json") for layer in m.spec.layers]) for m in family.members}
    assert len(layers) == 10 == family.possible


def test_dedup_is_on_the_spec_not_on_the_variables(tmp_path: Path) -> None:
    # `copies` never reaches the spec: 3 x 5 x 2 variable settings, 10 architectures.
    sample = {**family_data()["sample"], "copies": {"min": 1, "max": 3}}
    family = load_family(write_family(tmp_path, sample=sample, count=10, unseen=0))
    assert len({(m.variables["width"], m.variables["act"]) for m in family.members}) == 10
    with pytest.raises(
        SpecError, match=r"count: 11 distinct architectures asked, but 50000 draws \(seed 3\) gave only 10"
    ):
        load_family(write_family(tmp_path, sample=sample, count=11, unseen=0))


def test_the_last_members_are_unseen_and_the_first_seen_ones_evaluated(tmp_path: Path) -> None:
    family = load_family(write_family(tmp_path, count=8, unseen=3, each=2))
    assert [m.split for m in family.members] == ["seen"] * 5 + ["unseen"] * 3
    assert family.unseen == list(family.members[5:])
    assert family.evaluated_seen == list(family.members[:2])
    # `each` defaults to the number held out, as in the authors' scripts.
    assert len(load_family(write_family(tmp_path, count=8, unseen=3)).evaluated_seen) == 3


def test_draw_kinds(tmp_path: Path) -> None:
    sample = {
        "n": {"choice": [1, 2, 3], "p": [0, 1, 1]},
        "width": {"min": 5, "max": 15, "divisible_by": 4},
        "widths": {"length": "n", "item": {"min": 1, "max": 2}, "at": {0: {"choice": [7]}}},
        "rate": {"uniform": [0.1, 0.2]},
    }
    template = "family: mlp\n{{ n }} {{ width }} {{ widths }} {{ rate }}"
    spec = FamilySpec.model_validate(family_data(sample=sample, template=template))
    # n in {2, 3}; width in {8, 12}; widths: position 0 fixed, the rest 2 each; rate: 101 values.
    assert count_space(spec.sample) == (2 + 4) * 2 * 101
    for v in (draw_variables(spec.sample, random.Random(seed)) for seed in range(20)):
        assert v["n"] in (2, 3) and v["width"] in (8, 12) and len(v["widths"]) == v["n"]
        assert v["widths"][0] == 7 and set(v["widths"][1:]) <= {1, 2}
        assert 0.1 <= v["rate"] <= 0.2 and round(v["rate"], 3) == v["rate"]


def test_listed_members(tmp_path: Path) -> None:
    inline = yaml.safe_load(TEMPLATE.replace("{{ width }}", "8").replace("{{ act }}", "elu")) | {"name": "a"}
    (tmp_path / "b.yaml").write_text(
        yaml.safe_dump(
            {
                **inline,
                "name": "b",
                "layers": [{**inline["layers"][0], "out_features": 6}, {**inline["layers"][1], "in_features": 6}],
            }
        )
    )
    path = tmp_path / "listed.yaml"
    path.write_text(yaml.safe_dump({"name": "listed", "members": [inline, "b.yaml"], "unseen": 1}))
    family = load_family(path)
    assert [(m.name, m.split) for m in family.members] == [("a", "seen"), ("b", "unseen")]
    path.write_text(yaml.safe_dump({"name": "listed", "members": [inline, {**inline, "name": "c"}]}))
    with pytest.raises(SpecError, match=r"members\[1\]: same architecture as members\[0\]"):
        load_family(path)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"count": 11}, "count: 11 distinct architectures asked, but the sample can give at most 10"),
        ({"count": 10**6}, "count: Input should be less than or equal to 10000 (got 1000000)"),
        (
            {"name": "f" * 96},
            "name: must be 1 to 95 letters, digits, '_', '.' and '-', starting with a letter; members are named",
        ),
        ({"name": ".."}, "name: must be 1 to 95 letters"),
        ({"name": "1abc"}, "name: must be 1 to 95 letters"),
        (
            {"sample": {"width": {"min": 4, "max": 8, "divisible_by": "act"}, "act": {"choice": ["elu"]}}},
            "sample.width.divisible_by: 'act' is not an integer variable listed before 'width'",
        ),
        (
            {"count": 1, "unseen": 0, "sample": {"width": {"min": 0, "max": 0}, "act": {"choice": ["elu"]}}},
            "template: with width=0, act=elu: layers[0].out_features",
        ),
        (
            {"count": 1, "unseen": 0, "sample": {"width": {"min": 4, "max": 4}}},
            "template: with width=4: line 7: template error: 'act' is undefined",
        ),
        (
            {"sample": {"width": {"min": 9, "max": 11, "divisible_by": 4}, "act": {"choice": ["elu"]}}},
            "sample.width: no integer in [9, 11] divisible by 4",
        ),
        ({"sample": {"width": {"low": 4}}}, "sample.width: a draw is {min, max"),
        (
            {"sample": {"width": {"min": 4, "max": 8, "stepp": 2}}},
            "sample.width.stepp: unknown field; allowed here: min, max, step, divisible_by",
        ),
        (
            {"sample": {"w": {"length": 2, "at": {0: {"min": 1, "max": 2}}}}},
            "sample.w.item: give item, or at for every position",
        ),
        ({"unseen": 6}, "unseen: 6 leaves no seen member of 6"),
        ({"members": ["a.yaml"]}, "give exactly one of template (with sample and count) and members"),
    ],
)
def test_errors_name_the_field_and_value(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    path = write_family(tmp_path, **changes)
    with pytest.raises(SpecError) as caught:
        load_family(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_the_longest_family_name_gives_valid_member_names(tmp_path: Path) -> None:
    members = load_family(write_family(tmp_path, name="f" * 95, count=2, unseen=0)).members
    assert [len(m.name) for m in members] == [100, 100]


def test_cli_reports_a_bad_family_in_one_line(tmp_path: Path) -> None:
    path = write_family(tmp_path, count=11)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {path}: count: 11 distinct architectures asked")
    assert len(result.stderr.splitlines()) == 1


# --------------------------------------------------------------------------- the paper's families


def shipped_spec(name: str) -> FamilySpec:
    return FamilySpec.model_validate(yaml.safe_load((SPECS_DIR / f"{name}.yaml").read_text()))


@pytest.mark.parametrize(
    ("name", "count", "unseen", "seed", "possible"),
    [
        ("cifar10_cnn_mixed_depth", 100, 20, 75381, 5**3),
        ("cifar10_cnn_mixed_width", 500, 50, 362, 5 * 9 * 17),
        ("cifar10_cnn_mixed_depth_width", 1000, 50, 32460, 3**3 * 765),
        # heads h, width d a multiple of h in [32, 128] (265 pairs), 1-4 encoders of 1-3 Linears.
        ("agnews_transformer_mixed", 1000, 50, 57055, 265 * (3 + 9 + 27 + 81)),
    ],
)
def test_paper_family_settings(name: str, count: int, unseen: int, seed: int, possible: int) -> None:
    spec = shipped_spec(name)
    assert (spec.count, spec.unseen, spec.evaluated_seen, spec.seed) == (count, unseen, unseen, seed)
    assert count_space(spec.sample) == possible
    member = render_member(spec, draw_variables(spec.sample, random.Random(0)), "m", SPECS_DIR / f"{name}.yaml", [])
    assert member.generator.structure_encoder
    assert count_generator_params(member.generator) == (641_665, 663_151)


def test_width_family_spans_cnn20_to_the_widest_cnn() -> None:
    spec = shipped_spec("cifar10_cnn_mixed_width")
    source = SPECS_DIR / "cifar10_cnn_mixed_width.yaml"
    narrowest = render_member(spec, {"widths": [16, 32, 64]}, "n", source, [])
    widest = render_member(spec, {"widths": [32, 64, 128]}, "w", source, [])
    assert (narrowest.num_params, widest.num_params) == (269_034, 1_072_586)
    assert narrowest.layers == load_spec(SPECS_DIR / "cifar10_cnn20.yaml").layers


@pytest.mark.parametrize(
    ("setting", "params"),
    [
        # The authors' verified examples (reference-facts section 9).
        ({"encoders": 2, "heads": 1, "dim": 87, "linears": [2, 2]}, 538_360),
        ({"encoders": 1, "heads": 5, "dim": 35, "linears": [1]}, 185_924),
        ({"encoders": 2, "heads": 2, "dim": 64, "linears": [2, 2]}, 378_372),  # = Transformer-2L
    ],
)
def test_transformer_family_members(setting: dict[str, Any], params: int) -> None:
    source = SPECS_DIR / "agnews_transformer_mixed.yaml"
    member = render_member(shipped_spec("agnews_transformer_mixed"), setting, "t", source, [])
    assert member.num_params == params


def test_digits_family_holds_the_digits_mlp() -> None:
    source = SPECS_DIR / "digits_mlp_family.yaml"
    member = render_member(shipped_spec("digits_mlp_family"), {"depth": 2, "hidden": [128, 128]}, "d", source, [])
    assert member.layers == load_spec(SPECS_DIR / "digits_mlp.yaml").layers


def test_depth_family_members() -> None:
    family = shipped_family("cifar10_cnn_mixed_depth")
    assert (len(family.seen), len(family.unseen)) == (80, 20)
    assert {len(m.spec.layers) for m in family.members} <= set(range(20, 33))
    assert all(269_034 <= m.spec.num_params <= 463_018 for m in family.members)


# --------------------------------------------------------------------------- compiling


@pytest.fixture(scope="module")
def digits_plan_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("family") / "digits_family.pt"
    result = CliRunner().invoke(app, ["compile", str(SPECS_DIR / "digits_mlp_family.yaml"), "-o", str(path)])
    assert result.exit_code == 0, result.output
    assert "50 models (40 seen, 10 unseen), 2410 to 33722 params" in result.stdout
    return path


def test_digits_family_compiles_into_one_plan_with_its_split(digits_plan_path: Path) -> None:
    family = shipped_family("digits_mlp_family")
    plan = load_plan(digits_plan_path)
    assert [(t.name, t.split, t.num_params) for t in plan.targets] == [
        (m.name, m.split, m.spec.num_params) for m in family.members
    ]
    # One normalisation over every member, unseen ones included (as the authors normalise):
    # the plan's ranges are the union of each member's own.
    own = [compile_spec(m.spec).structure_ranges for m in family.members]
    assert torch.equal(plan.structure_ranges.hi, torch.stack([r.hi for r in own]).amax(0))
    assert torch.equal(plan.structure_ranges.lo, torch.stack([r.lo for r in own]).amin(0))


def test_a_plan_without_splits_reads_as_seen(digits_plan_path: Path) -> None:
    plan = load_plan(digits_plan_path)
    data = plan.targets[-1].to_dict()
    del data["split"]
    assert type(plan.targets[-1]).from_dict(data).split == "seen"


@pytest.mark.parametrize("source", ["plan", "family"])
def test_inspect_json_lists_the_family(digits_plan_path: Path, source: str) -> None:
    path = digits_plan_path if source == "plan" else SPECS_DIR / "digits_mlp_family.yaml"
    result = CliRunner().invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    family = shipped_family("digits_mlp_family")
    assert [(t["name"], t["num_params"], t["split"]) for t in summary["targets"]] == [
        (m.name, m.spec.num_params, m.split) for m in family.members
    ]
    assert summary["generator_params"] == {"trainable": 181_889, "total": 193_135}
    assert (
        summary["family"] | {"count": 50, "seen": 40, "unseen": 10, "smallest": 2410, "largest": 33722}
        == summary["family"]
    )


def test_family_files_are_told_from_specs() -> None:
    assert file_mode(SPECS_DIR / "digits_mlp_family.yaml").mode == "family"
    assert file_mode(SPECS_DIR / "digits_mlp.yaml") is None
    assert file_mode(SPECS_DIR / "cifar10_cnn20.yaml") is None  # a template: not YAML before rendering


def test_overrides_reach_the_family_and_its_members(tmp_path: Path) -> None:
    family = family_from_text(
        write_family(tmp_path).read_text(), tmp_path / "f.yaml", ["count=3", "unseen=1", "generator.hidden=8"]
    )
    assert len(family.members) == 3 and len(family.unseen) == 1
    assert {m.spec.generator.hidden for m in family.members} == {8}
