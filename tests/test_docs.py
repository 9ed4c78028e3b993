"""The user docs cannot drift from the code: every spec field, every value a field can take,
every descriptor field and every enum id is checked against the documents."""

from __future__ import annotations

import copy
import inspect
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import REPO_ROOT, SHARED_DATA
from uhn_spec import ExperimentSpec, enums
from uhn_spec.descriptors import GLOBAL_FIELDS, INDEX_FIELDS, LOCAL_FIELDS, TASK_FIELDS
from uhn_spec.layers import REGISTRY, LayerSpec

SPECS_DOC = REPO_ROOT / "docs" / "specs.md"
DESCRIPTORS_DOC = REPO_ROOT / "docs" / "descriptors.md"
# Fields every layer kind inherits are documented once, in the section of the base class.
LAYER_BASE = LayerSpec.__name__


# --------------------------------------------------------------------------- markdown sections


@dataclass(frozen=True)
class Section:
    heading: str
    text: str  # heading line and body, up to the next heading of the same or a higher level


def sections(markdown: str) -> list[Section]:
    """Split at headings (not at '#' lines inside fenced code blocks)."""
    lines = markdown.splitlines()
    headings: list[tuple[int, int]] = []  # (line number, level)
    fenced = False
    for number, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"^(#+) ", line)):
            headings.append((number, len(match.group(1))))
    result = []
    for i, (start, level) in enumerate(headings):
        end = next((n for n, lvl in headings[i + 1 :] if lvl <= level), len(lines))
        result.append(Section(lines[start], "\n".join(lines[start:end])))
    return result


def section_titled(markdown: str, marker: str) -> Section | None:
    """The one section whose heading contains ``marker``, e.g. "(TaskSpec)"."""
    found = [s for s in sections(markdown) if marker in s.heading]
    return found[0] if len(found) == 1 else None


# --------------------------------------------------------------------------- spec language


def schema_models(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every object model of a pydantic JSON schema: the root and each $defs entry."""
    return {schema["title"]: schema, **schema.get("$defs", {})}


def choices(prop: dict[str, Any]) -> list[str]:
    """The string values a property can take (enum and const), through anyOf/items."""
    found = [v for v in prop.get("enum", []) if isinstance(v, str)]
    if isinstance(prop.get("const"), str):
        found.append(prop["const"])
    for sub in prop.get("anyOf", []) + prop.get("oneOf", []):
        found += choices(sub)
    if isinstance(prop.get("items"), dict):
        found += choices(prop["items"])
    return found


def undocumented(schema: dict[str, Any], markdown: str) -> list[str]:
    """What the schema has that the document does not describe, as readable lines."""
    layer_kinds = {cls.__name__ for cls in REGISTRY.values()}
    inherited = set(LayerSpec.model_fields)
    problems: list[str] = []
    for title, model in schema_models(schema).items():
        is_layer = title in layer_kinds
        for name, prop in model.get("properties", {}).items():
            # `kind` is described once with the shared fields; its value names each kind's section.
            name_owner = LAYER_BASE if is_layer and name in inherited | {"kind"} else title
            values_owner = LAYER_BASE if is_layer and name in inherited else title
            for owner, words in ((name_owner, [name]), (values_owner, choices(prop))):
                problems += missing_words(markdown, owner, f"{title}.{name}", words)
    return sorted(set(problems))


def missing_words(markdown: str, owner: str, field: str, words: list[str]) -> list[str]:
    section = section_titled(markdown, f"({owner})")
    if section is None:
        return [f"no single section with '({owner})' in its heading"]
    return [f"{field}: `{w}` is not in the section '{section.heading}'" for w in words if f"`{w}`" not in section.text]


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return ExperimentSpec.model_json_schema()


def test_specs_doc_describes_every_field_and_value(schema: dict[str, Any]) -> None:
    problems = undocumented(schema, SPECS_DOC.read_text())
    assert not problems, "docs/specs.md is behind the spec models:\n" + "\n".join(problems)


def test_every_layer_kind_has_a_section() -> None:
    text = SPECS_DOC.read_text()
    for kind, cls in REGISTRY.items():
        section = section_titled(text, f"({cls.__name__})")
        assert section is not None and f"`{kind}`" in section.heading, kind


def test_check_catches_an_undocumented_field(schema: dict[str, Any]) -> None:
    grown = copy.deepcopy(schema)
    grown["$defs"]["TrainSpec"]["properties"]["momentum"] = {"type": "number"}
    assert undocumented(grown, SPECS_DOC.read_text()) == [
        "TrainSpec.momentum: `momentum` is not in the section '## Training (TrainSpec)'"
    ]


def test_check_catches_an_undocumented_value(schema: dict[str, Any]) -> None:
    grown = copy.deepcopy(schema)
    grown["$defs"]["TrainSpec"]["properties"]["precision"]["enum"].append("fp8")
    assert undocumented(grown, SPECS_DOC.read_text()) == [
        "TrainSpec.precision: `fp8` is not in the section '## Training (TrainSpec)'"
    ]


def test_check_catches_an_undocumented_model(schema: dict[str, Any]) -> None:
    grown = copy.deepcopy(schema)
    grown["$defs"]["RNNSpec"] = {"title": "RNNSpec", "properties": {"hidden": {"type": "integer"}}}
    assert undocumented(grown, SPECS_DOC.read_text()) == ["no single section with '(RNNSpec)' in its heading"]


def test_headings_inside_code_blocks_are_not_sections() -> None:
    text = "# A (X)\n```yaml\n# not a heading (Y)\n```\nbody `y`\n## B (Y)\n`z`\n"
    assert [s.heading for s in sections(text)] == ["# A (X)", "## B (Y)"]
    assert section_titled(text, "(X)").text.endswith("`z`")  # a subsection belongs to its parent


# --------------------------------------------------------------------------- descriptors


FIELD_TUPLES = {
    "INDEX_FIELDS": INDEX_FIELDS,
    "GLOBAL_FIELDS": GLOBAL_FIELDS,
    "TASK_FIELDS": TASK_FIELDS,
    "LOCAL_FIELDS": LOCAL_FIELDS,
}

ENUMS = [
    cls
    for _, cls in inspect.getmembers(enums, inspect.isclass)
    if issubclass(cls, enums.NamedIntEnum) and cls is not enums.NamedIntEnum
]


def table_rows(text: str) -> list[list[str]]:
    """Cells of every markdown table row (header and separator rows included)."""
    return [
        [c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines() if line.startswith("|")
    ]


@pytest.mark.parametrize("vector", list(FIELD_TUPLES))
def test_descriptor_fields_are_documented_in_order(vector: str) -> None:
    section = section_titled(DESCRIPTORS_DOC.read_text(), f"({vector})")
    assert section is not None, f"docs/descriptors.md has no section '({vector})'"
    documented = [row[1] for row in table_rows(section.text) if row[0].isdigit()]
    assert documented == [f"`{name}`" for name in FIELD_TUPLES[vector]]


@pytest.mark.parametrize("enum", ENUMS, ids=lambda cls: cls.__name__)
def test_enum_ids_are_documented(enum: type[enums.NamedIntEnum]) -> None:
    section = section_titled(DESCRIPTORS_DOC.read_text(), f"### {enum.__name__} ")
    assert section is not None, f"docs/descriptors.md has no section '### {enum.__name__} (...)'"
    documented = {row[0]: row[1] for row in table_rows(section.text)}
    for member in enum:
        assert documented.get(f"`{member.yaml_name}`") == str(int(member)), f"{enum.__name__}.{member.name}"


def local_fields_set_by(cls: type[LayerSpec]) -> set[str]:
    """The local descriptor fields a kind writes (which ones does not depend on the values)."""
    required = {name: 2 for name, field in cls.model_fields.items() if field.is_required()}
    return set(cls.model_construct(**required).local_row(0))


def test_local_field_table_matches_the_layer_kinds() -> None:
    section = section_titled(DESCRIPTORS_DOC.read_text(), "(LOCAL_FIELDS)")
    assert section is not None
    header, *rows = [r for r in table_rows(section.text) if r[0] == "#" or r[0].isdigit()]
    assert header[3:] == list(REGISTRY), "one column per registered kind, in registry order"
    for row in rows:
        field = row[1].strip("`")
        for kind, cell in zip(REGISTRY, row[3:]):
            sets = field in local_fields_set_by(REGISTRY[kind])
            assert (cell == "✓") == sets, f"{field} / {kind}: the table says {cell or 'blank'!r}"


# --------------------------------------------------------------------------- README


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO_ROOT / "README.md").read_text(), flags=re.S)


def test_readme_python_example_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's Python example is what a new user copies first: it must run as written."""
    code = readme_python_blocks()[0]
    monkeypatch.chdir(REPO_ROOT)  # it names specs/ relative to the repository root
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["flat"].shape == (118_282,)
    assert namespace["H"].index_in.weight.grad is not None


def test_readme_training_loop_runs() -> None:
    """The README's own-loop example (uhn.HyperNetwork): it trains, and the generated weights
    load strictly into the model and give the generator's outputs."""
    (code,) = [block for block in readme_python_blocks() if "uhn.HyperNetwork" in block]
    assert (
        len([line for line in code.strip().splitlines() if not line.startswith("import") and "import " not in line])
        <= 10
    )
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    hnet, model, x = namespace["hnet"], namespace["model"], namespace["x"]
    assert hnet.generator.index_in.weight.grad is not None
    with torch.no_grad():
        assert torch.allclose(hnet.eval()(x), model.eval()(x), atol=1e-5, rtol=1e-4)


def readme_import_example() -> list[tuple[str, list[str]]]:
    """The README's `uhn import` example: (command, the comment lines under it that show
    what it prints), continuation lines joined."""
    section = (REPO_ROOT / "README.md").read_text().split("## Import a PyTorch model", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, flags=re.S)
    assert block is not None, "the README's import section has no sh block"
    steps: list[tuple[str, list[str]]] = []
    for line in block.group(1).replace("\\\n", " ").splitlines():
        if line.startswith("# "):
            steps[-1][1].append(line[2:])
        elif line.strip():
            steps.append((" ".join(line.split()), []))
    return steps


def run_shell(command: str, cwd: Path) -> str:
    """One README line, run by bash in ``cwd`` with this environment's `uhn` and `python`."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    """A user's working folder: the example's paths (tests/import_models/...) resolve from it."""
    (tmp_path / "tests").symlink_to(REPO_ROOT / "tests")
    return tmp_path


def test_readme_import_example_prints_what_it_says(user_folder: Path) -> None:
    """Its import and inspect lines, run as written on the full ResNet-18, print the lines
    the README shows under them (no data needed)."""
    steps = readme_import_example()
    assert [shlex.split(command)[:2] for command, _ in steps[:2]] == [["uhn", "import"], ["uhn", "inspect"]]
    for command, shown in steps[:2]:
        printed = run_shell(command, user_folder).strip()
        assert printed == shown[0].split(" = ")[0], f"{command} printed {printed!r}"


@pytest.mark.slow  # about 2 min on the loaded 2-core machine; skipped without CIFAR-10
def test_readme_import_example_runs_end_to_end(user_folder: Path) -> None:
    """All of it, as written except: the 2-stage tiny_resnet10 of the same class stands in for
    ResNet-18 and training is a few steps of a tiny generator (the full one takes hours here)."""
    if not (SHARED_DATA / "cifar10").is_dir():
        pytest.skip(f"CIFAR-10 not found at {SHARED_DATA}")
    budget = (
        "--set train.epochs=null --set train.steps=2 --set "
        "train.warmup=0 --set train.init_steps=1 --set train.batch_size=8"
    )
    budget += " --set generator.index_freqs=16 --set generator.hidden=8"
    for command, _ in readme_import_example():
        command = command.replace(":resnet18 ", ":tiny_resnet10 ").replace(
            "models.resnet18()", "models.tiny_resnet10()"
        )
        command = command.replace("../shared/data", str(SHARED_DATA))
        if command.startswith("uhn train"):
            command += f" {budget}"
        run_shell(command, user_folder)
    assert (user_folder / "resnet18_module.safetensors").is_file()


# --------------------------------------------------------------------------- generated tables


def test_generated_descriptor_tables_match_the_registry() -> None:
    """The registry-derived tables are rendered, never hand-edited: `python tools/doc_tables.py`."""
    from tools.doc_tables import BLOCK, rendered

    text = DESCRIPTORS_DOC.read_text()
    assert {m.group("name") for m in BLOCK.finditer(text)} == {"local-fields", "param-types", "layer-types"}
    assert rendered(text) == text, "docs/descriptors.md is stale: run `python tools/doc_tables.py`"
