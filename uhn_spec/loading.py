"""Reading spec files: safe YAML, ``--set PATH=VALUE`` overrides, number checks, and the
steps every file kind shares (a mapping at the top, a section validated with its path, one name per
member).

Every error is a ``SpecError`` naming its YAML path and file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml
from pydantic import BaseModel, ValidationError

from .errors import SpecError
from .spec import format_validation_error
from .template import read_spec_file

INT64_MAX = 2**63 - 1
# Values a YAML document may expand to (aliases repeat a node without copying it): specs
# hold hundreds; a billion-laughs document would hold billions.
MAX_YAML_NODES = 1_000_000


class CheckedConstruction:
    """Refuses duplicate keys (naming the key and both lines), recursive aliases and
    documents that alias-expand into more than MAX_YAML_NODES values, before constructing
    anything."""

    def construct_document(self, node: yaml.Node) -> Any:
        check_yaml_nodes(node)
        return super().construct_document(node)  # type: ignore[misc]


class SpecLoader(CheckedConstruction, yaml.SafeLoader):
    """The pure-Python safe loader: its error messages are the ones the docs quote."""


class FastSpecLoader(CheckedConstruction, getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """libyaml's safe loader where PyYAML has it, several times faster (a family file renders
    and reads hundreds of member specs)."""


# Where a node sits: (where its parent sits, its key or index), None for the root. Built as a
# chain so that walking a deep document costs no path string per node.
NodePlace = Union[tuple["NodePlace", str], None]


def yaml_path(place: NodePlace) -> str:
    parts: list[str] = []
    while place is not None:
        place, part = place
        parts.append(part)
    return "".join(reversed(parts)).lstrip(".")


def check_yaml_nodes(root: yaml.Node) -> None:
    """Walk the node graph depth first: count the values it expands to, refuse a node that
    contains itself (``a: &a [*a]`` would expand forever) and duplicate keys."""
    count = 0
    open_nodes: set[int] = set()  # the collections on the way down to the current node
    stack: list[tuple[yaml.Node, NodePlace, bool]] = [(root, None, False)]
    while stack:
        node, place, leaving = stack.pop()
        if leaving:
            open_nodes.discard(id(node))
            continue
        count += 1
        if count > MAX_YAML_NODES:
            raise SpecError(yaml_path(place), f"the document expands to more than {MAX_YAML_NODES} values (YAML aliases?)")
        if not isinstance(node, yaml.CollectionNode):
            continue
        if id(node) in open_nodes:
            line = node.start_mark.line + 1
            raise SpecError(yaml_path(place), f"a YAML alias refers to the node (line {line}) that contains it; it would never end")
        open_nodes.add(id(node))
        stack.append((node, place, True))
        if isinstance(node, yaml.MappingNode):
            stack.extend(reversed(mapping_children(node, place)))
        else:
            stack.extend((item, (place, f"[{i}]"), False) for i, item in reversed(list(enumerate(node.value))))


def mapping_children(node: yaml.MappingNode, place: NodePlace) -> list[tuple[yaml.Node, NodePlace, bool]]:
    """The values of a mapping with their places; a key given twice is refused."""
    children: list[tuple[yaml.Node, NodePlace, bool]] = []
    seen: dict[Any, int] = {}
    for key, value in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            children.append((value, place, False))
            continue
        child: NodePlace = (place, f".{key.value}")
        line = key.start_mark.line + 1
        if (key.tag, key.value) in seen:
            first = seen[(key.tag, key.value)]
            raise SpecError(yaml_path(child), f"duplicate key at lines {first} and {line}; keep one of them")
        seen[(key.tag, key.value)] = line
        children.append((value, child, False))
    return children


def parse_yaml(text: str) -> Any:
    """Parse spec YAML safely; raise SpecError(location, ...) on any YAML error."""
    try:
        return yaml.load(text, Loader=FastSpecLoader)  # noqa: S506 - a SafeLoader
    except (yaml.YAMLError, RecursionError):
        pass  # parse again below, for the pure-Python loader's message
    try:
        return yaml.load(text, Loader=SpecLoader)  # noqa: S506 - a SafeLoader
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = err.problem or str(err).splitlines()[0]
        raise SpecError(at, f"invalid YAML: {problem}") from None
    except yaml.reader.ReaderError as err:
        raise SpecError(f"character {err.position}", f"invalid YAML: {str(err).splitlines()[0]}") from None
    except yaml.YAMLError as err:
        raise SpecError("", f"invalid YAML: {str(err).splitlines()[0]}") from None
    except RecursionError:
        raise SpecError("", "invalid YAML: nested too deeply") from None


def check_numbers(data: Any, path: str = "") -> None:
    """Every float is finite and every integer fits 64 bits (torch's index type)."""
    stack: list[tuple[Any, str]] = [(data, path)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise SpecError(where, f"{value} is not finite; give a finite number")
        if isinstance(value, int) and abs(value) > INT64_MAX:
            raise SpecError(where, f"{value} does not fit a 64-bit integer (at most {INT64_MAX})")
        if isinstance(value, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(value))


def parse_override(item: str) -> tuple[list[str | int], Any]:
    """``train.lr=1e-4`` or ``layers[2].dropout=0.1`` -> (path parts, YAML-parsed value)."""
    if "=" not in item:
        raise SpecError("--set", f"{item!r} is not PATH=VALUE (e.g. train.epochs=3)")
    path, raw = item.split("=", 1)
    parts: list[str | int] = []
    for token in re.findall(r"[^.\[\]]+|\[\d+\]", path.strip()):
        parts.append(int(token[1:-1]) if token.startswith("[") else token)
    if not parts:
        raise SpecError("--set", f"{item!r} has an empty path")
    if not raw.strip():
        return parts, ""
    try:
        return parts, parse_yaml(raw)
    except SpecError as err:
        raise SpecError("--set", f"{item!r}: the value is not valid YAML ({err.message.removeprefix('invalid YAML: ')}); quote a string value") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        parts, value = parse_override(item)
        node: Any = data
        for depth, key in enumerate(parts[:-1]):
            nxt = parts[depth + 1]
            try:
                if isinstance(node, dict) and key not in node:
                    node[key] = [] if isinstance(nxt, int) else {}
                node = node[key]
            except (KeyError, IndexError, TypeError):
                raise SpecError("--set", f"{item!r}: no such path in the spec") from None
        last = parts[-1]
        try:
            node[last] = value
        except (IndexError, TypeError):
            raise SpecError("--set", f"{item!r}: no such path in the spec") from None
    return data


def load_yaml(text: str, where: str | None = None) -> Any:
    """``parse_yaml`` with its error placed in file ``where``."""
    try:
        return parse_yaml(text)
    except SpecError as err:
        raise SpecError(err.path, err.message, where) from None



def read_spec_text(path: Path) -> str:
    """A spec file's text: UTF-8 (a BOM is fine), at most MAX_RENDERED_CHARS bytes of a
    regular file (``read_spec_file``)."""
    return read_spec_file(Path(path))


def read_mapping(text: str, where: str | None, what: str) -> dict[str, Any]:
    """A file's top-level YAML mapping; ``what`` says what it should hold when it is not one."""
    data = load_yaml(text, where)
    if not isinstance(data, dict):
        raise SpecError("", what, where)
    return data


Model = TypeVar("Model", bound=BaseModel)


def validated(
    model: type[Model],
    data: Any,
    where: str | None,
    path: str = "",
    formatter: Callable[[ValidationError], str] = format_validation_error,
) -> Model:
    """``model.model_validate(data)``; a failure is one SpecError at ``path`` in file ``where``."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise SpecError(path, formatter(err), where) from None


def check_unique_names(names: Sequence[str], entry: Callable[[int], str], where: str | None, inner: str = "") -> None:
    """Members are addressed by name (``--task NAME``, summary.json, models.csv): one each.
    ``entry(i)`` is member i's path, ``inner`` the path from it to the member spec."""
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            also = f"{name!r} is also {entry(seen[name])}'s name; give each member its own"
            raise SpecError(f"{entry(i)}{inner}.name", also, where)
        seen[name] = i
