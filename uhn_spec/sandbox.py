"""What a spec template may touch, and how large what it builds may get (``template.py``).

The sandbox is a whitelist. A template reaches only plain data (str, int, float, bool, None,
list, tuple, dict, and jinja2's subclasses of them such as ``Markup`` and groupby's tuples),
jinja2's own template-level objects (``loop``, macros and ``caller``, ``self``'s blocks,
imported template modules) and two helper functions (``range``, ``dict``) that hold nothing
a template can read. Attributes are readable only on those, only the public ones of the
plain type (or the documented ones of the jinja2 object), and only when their value is again
plain data, a jinja2 template object or a method bound to the object itself: no path, module,
environment, loader, type or function is ever reachable.

Sizes are estimated *before* a string is built (``text_size``, ``output_size``), so memory
stays a small multiple of ``MAX_RENDERED_CHARS`` during rendering, not only in the result.
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jinja2
from jinja2.environment import TemplateModule
from jinja2.runtime import BlockReference, LoopContext, Macro, Undefined


class RenderLimitError(jinja2.TemplateRuntimeError):
    """A template exceeded a rendering bound (size, time, number size)."""


PLAIN_DATA: tuple[type, ...] = (str, int, float, type(None), list, tuple, dict)  # bool is an int
# Methods of plain types a template may not call: their results are not plain data (bytes),
# or their size cannot be bounded from the arguments (a translation table's values, tab width).
REFUSED_METHODS = frozenset({"encode", "to_bytes", "translate", "expandtabs"})
# Filters a spec has no use for whose output cannot be bounded cheaply (markup, URL quoting,
# a wrap string per line, a pretty-printer indenting by depth), and ``random``: a spec renders
# the same every time (plans, run folders and the reproduce harness compare what it renders).
REMOVED_FILTERS = frozenset({"pprint", "urlize", "urlencode", "xmlattr", "wordwrap", "random"})
# jinja2's template-level objects and the attributes of theirs a template may read.
RUNTIME_ATTRIBUTES: dict[type, frozenset[str]] = {
    LoopContext: frozenset(
        {
            "index",
            "index0",
            "revindex",
            "revindex0",
            "first",
            "last",
            "length",
            "depth",
            "depth0",
            "previtem",
            "nextitem",
            "cycle",
            "changed",
        }
    ),
    Macro: frozenset({"name", "arguments", "catch_kwargs", "catch_varargs", "caller"}),
    BlockReference: frozenset({"name", "super"}),
}
# What an attribute's value may be (besides a method bound to the object read).
SAFE_VALUES: tuple[type, ...] = (*PLAIN_DATA, Undefined, Macro, BlockReference)


class FormatCall:
    """``str.format`` / ``format_map`` of one string, as the sandbox wraps them (fields read
    through its own getattr), after a size check. Private slots: nothing to read."""

    __slots__ = ("_call",)

    def __init__(self, call: Callable[..., str]):
        self._call = call

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        return self._call(*args, **kwargs)


# What a template may call (besides the helper functions and methods of plain data).
SAFE_CALLABLES: tuple[type, ...] = (Macro, BlockReference, LoopContext, Undefined, FormatCall)
# What an object of any other kind counts as when estimating printed text: its repr.
OTHER_TEXT_SIZE = 100


# --------------------------------------------------------------------------- access policy


def readable_attribute(obj: Any, attr: str) -> bool:
    """Whether a template may read ``obj.attr`` at all (the value is checked separately)."""
    for kind, names in RUNTIME_ATTRIBUTES.items():
        if isinstance(obj, kind):
            return attr in names
    if isinstance(obj, TemplateModule):
        return True  # its exported macros and variables; the value check refuses anything else
    if attr in REFUSED_METHODS:
        return False
    if isinstance(obj, tuple) and attr in getattr(type(obj), "_fields", ()):
        return True  # a named tuple's fields: groupby's (grouper, list)
    return any(isinstance(obj, base) and hasattr(base, attr) for base in PLAIN_DATA)


def safe_value(obj: Any, value: Any) -> bool:
    """Plain data, a jinja2 template object, or a method bound to ``obj`` itself (never a
    class or static method, whose owner is a type)."""
    if isinstance(value, SAFE_VALUES):
        return True
    return isinstance(value, (types.MethodType, types.BuiltinMethodType)) and value.__self__ is obj


def safe_callable(obj: Any, helpers: Iterable[Any]) -> bool:
    """Macros, blocks, recursive loops, the helper functions and methods of plain data."""
    if isinstance(obj, SAFE_CALLABLES) or any(obj is helper for helper in helpers):
        return True
    if isinstance(obj, (types.MethodType, types.BuiltinMethodType)):
        return isinstance(obj.__self__, (*PLAIN_DATA, LoopContext)) and obj.__name__ not in REFUSED_METHODS
    return False


class DeadlineRange:
    """``range`` that calls ``check`` on every step (empty nested loops run long). It keeps
    its state in private slots, so a template can read nothing of it."""

    __slots__ = ("_items", "_check")

    def __init__(self, items: range, check: Callable[[], None]):
        self._items = items
        self._check = check

    def __iter__(self) -> Iterator[int]:
        for item in self._items:
            self._check()
            yield item

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: Any) -> Any:
        item = self._items[index]
        return DeadlineRange(item, self._check) if isinstance(item, range) else item

    def __contains__(self, item: Any) -> bool:
        return item in self._items

    def __repr__(self) -> str:
        return repr(self._items)


# --------------------------------------------------------------------------- size estimates


def text_size(value: Any, limit: int, indent: int = 0, strings_only: bool = False) -> int:
    """About ``len(str(value))`` (with ``indent``: of its JSON so indented), counted without
    building it and stopping once past ``limit``. Strings count their length (plus quotes
    inside a container), numbers their digits, containers their items and separators; an
    item shared many times (``[a, a, a]``) is measured once. Escapes (repr, JSON) may make
    the real text a few times longer: a small multiple of the bound, never more.
    ``strings_only``: count only the characters of the strings held (what a list copies by
    reference but ``join`` or printing copies in full)."""
    memo: dict[tuple[int, int], int] = {}
    quotes, separator = (0, 0) if strings_only else (2, 2)

    def size(item: Any, depth: int) -> int:
        if isinstance(item, str):
            return len(item) + (quotes if depth else 0)
        if strings_only and not isinstance(item, (list, tuple, dict)):
            return 0
        if isinstance(item, bool) or item is None:
            return 5
        if isinstance(item, int):
            return item.bit_length() * 31 // 100 + 2
        if isinstance(item, float):
            return 24
        if not isinstance(item, (list, tuple, dict)):
            return OTHER_TEXT_SIZE
        key = (id(item), depth if indent else 0)
        if key not in memo:
            parts = [part for pair in item.items() for part in pair] if isinstance(item, dict) else item
            total = separator
            line = indent * (depth + 1) + 1 if indent else 0
            for part in parts:
                total += size(part, depth + 1) + separator + line
                if total > limit:
                    break
            memo[key] = total
        return memo[key]

    return size(value, 0)


def joined_size(separator: str, items: list[Any], limit: int) -> int:
    """``len(separator.join(map(str, items)))``, estimated (``text_size``)."""
    total = len(separator) * max(len(items) - 1, 0)
    for item in items:
        total += text_size(item, limit)
        if total > limit:
            break
    return total


def replaced_size(text: str, old: str, new: str, count: int | None = None) -> int:
    """``len(text.replace(old, new, count))``, computed without building it."""
    found = text.count(old) if old else len(text) + 1
    if count is not None and count >= 0:
        found = min(found, count)
    return len(text) + found * (len(new) - len(old))


def formatted_size(template: str, values: Iterable[Any], limit: int) -> int:
    """An upper bound of ``len(template % values)`` or of ``template.format(*values)``: every
    field (each ``%`` or ``{``) at most as long as the longest value or width in it."""
    fields = template.count("%") + template.count("{")
    if not fields:
        return len(template)
    widest = max((int(digits) for digits in re.findall(r"\d{1,8}", template)), default=0)
    longest = max((text_size(value, limit) for value in values), default=0)
    return len(template) + fields * max(widest, longest)


def format_values(values: Any) -> list[Any]:
    """The values a ``%`` or ``format`` may print: a tuple's items, a mapping's values."""
    if isinstance(values, dict):
        return list(values.values())
    if isinstance(values, tuple):
        return [v for value in values for v in format_values(value)] if values else []
    return [values]


def bounded_items(value: Any, limit: int) -> list[Any]:
    """``value``'s items as a list (a generator consumed once), refusing more than ``limit``."""
    items = []
    for item in value:
        items.append(item)
        if len(items) > limit:
            raise RenderLimitError(f"a sequence of more than {limit} items")
    return items


__all__ = [
    "DeadlineRange",
    "FormatCall",
    "RenderLimitError",
    "REMOVED_FILTERS",
    "bounded_items",
    "format_values",
    "formatted_size",
    "joined_size",
    "readable_attribute",
    "replaced_size",
    "safe_callable",
    "safe_value",
    "text_size",
]
