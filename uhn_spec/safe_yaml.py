"""Safe YAML for every file uhn reads (specs, tables, run records): PyYAML's safe loaders,
refusing duplicate keys, self-containing aliases and documents that alias-expand beyond
MAX_YAML_NODES values, every error one ``SpecError`` with its line or YAML path.

It needs only PyYAML, so that ``received`` (which reads files uhn did not write) stays light.
"""

from __future__ import annotations

from typing import Any

import yaml

from .errors import SpecError

# Values a YAML document may expand to (aliases repeat a node without copying it): specs
# hold hundreds; a billion-laughs document would hold billions.
MAX_YAML_NODES = 1_000_000


class CheckedConstruction:
    """Refuses duplicate keys (naming the key and both lines), recursive aliases and
    documents that alias-expand into more than MAX_YAML_NODES values, before constructing
    anything."""

    def construct_document(self, node: yaml.Node) -> Any:
        check_yaml_nodes(node)
        return super().construct_document(node)  # type: ignore[misc]  # a mixin: the loader after it has it


class SpecLoader(CheckedConstruction, yaml.SafeLoader):
    """The pure-Python safe loader: its error messages are the ones the docs quote."""


class FastSpecLoader(CheckedConstruction, getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]  # base chosen at import
    """libyaml's safe loader where PyYAML has it, which is faster (a family file renders
    and reads hundreds of member specs)."""


# Where a node sits: (where its parent sits, its key or index), None for the root. Built as a
# chain so that walking a deep document costs no path string per node.
NodePlace = tuple["NodePlace", str] | None


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
            raise SpecError(
                yaml_path(place), f"the document expands to more than {MAX_YAML_NODES} values (YAML aliases?)"
            )
        if not isinstance(node, yaml.CollectionNode):
            continue
        if id(node) in open_nodes:
            line = node.start_mark.line + 1
            raise SpecError(
                yaml_path(place), f"a YAML alias refers to the node (line {line}) that contains it; it would never end"
            )
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


def load_yaml(text: str, where: str | None = None) -> Any:
    """``parse_yaml`` with its error placed in file ``where``."""
    try:
        return parse_yaml(text)
    except SpecError as err:
        raise SpecError(err.path, err.message, where) from None
