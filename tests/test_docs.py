"""The user docs cannot drift from the code: every spec field, every value a field can take,
every descriptor field and every enum id is checked against the documents."""

from __future__ import annotations

import copy
import inspect
import re
from dataclasses import dataclass
from typing import Any

import pytest

from uhn_spec import ExperimentSpec, enums
from uhn_spec.descriptors import GLOBAL_FIELDS, INDEX_FIELDS, LOCAL_FIELDS, TASK_FIELDS
from uhn_spec.layers import REGISTRY, LayerSpec

from .conftest import REPO_ROOT

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
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]


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


def test_readme_python_example_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's Python example is what a new user copies first: it must run as written."""
    (code,) = re.findall(r"```python\n(.*?)```", (REPO_ROOT / "README.md").read_text(), flags=re.S)
    monkeypatch.chdir(REPO_ROOT)  # it names specs/ relative to the repository root
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["flat"].shape == (118_282,)
    assert namespace["H"].index_in.weight.grad is not None


# --------------------------------------------------------------------------- generated tables


def test_generated_descriptor_tables_match_the_registry() -> None:
    """The registry-derived tables are rendered, never hand-edited: `python -m uhn_spec.doc_tables`."""
    from uhn_spec.doc_tables import BLOCK, rendered

    text = DESCRIPTORS_DOC.read_text()
    assert {m.group("name") for m in BLOCK.finditer(text)} == {"local-fields", "param-types", "layer-types"}
    assert rendered(text) == text, "docs/descriptors.md is stale: run `python -m uhn_spec.doc_tables`"
