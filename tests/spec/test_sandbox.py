"""The template sandbox, tried as an attacker would (issue 26).

Two parts: a list of concrete escape and exhaustion attempts, each of which must end in one
line (a SpecError) or harmless output while a marker file outside the spec's folder is
neither read, created nor deleted; and a property test that walks every attribute and item
reachable through the sandbox's own ``getattr``/``getitem`` from everything a template can
name, asserting that each value is plain data or one of jinja2's template objects.
"""

from __future__ import annotations

import types
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2
import pytest
from jinja2.environment import TemplateModule
from jinja2.runtime import BlockReference, LoopContext, Macro, TemplateReference

from uhn_spec import SpecError
from uhn_spec.sandbox import DeadlineRange, FormatCall
from uhn_spec.template import FAMILY_TEMPLATES, MAX_RENDERED_CHARS, SpecEnvironment, render_spec_template

MARKER_TEXT = "top secret marker"
RANGE_ROOTS = "range(1).environment.loader.roots[0][1]"

# Escape routes. Add new routes here: each is rendered as a spec (with {marker} and {created}
# replaced by paths outside the spec's folder) and must fail with one line or print nothing
# of the marker, and leave both files as they were.
ATTACKS: list[str] = [
    # the range helper and the loader's paths (the escape of issue 26)
    f"{{{{ {RANGE_ROOTS} }}}}",
    f"{{{{ ({RANGE_ROOTS} / '{{marker}}').read_text() }}}}",
    f"{{{{ {RANGE_ROOTS}.joinpath('{{created}}').touch() }}}}",
    f"{{{{ {RANGE_ROOTS}.joinpath('{{marker}}').unlink() }}}}",
    "{{ range(1).environment }}",
    "{{ range(1)._items }}",
    "{{ range(1)._check.__self__ }}",
    "{{ range(1)|attr('environment') }}",
    "{{ range(1)|attr('_check') }}",
    "{{ range.__self__ }}",
    "{{ range.__globals__ }}",
    "{{ range.__closure__ }}",
    "{{ range|attr('__closure__') }}",
    "{{ range(10)[2:4]._items }}",
    # format strings read attributes through the sandbox too
    "{{ '{0.environment.loader.roots}'.format(range(1)) }}",
    "{{ '{0._items}'.format(range(1)) }}",
    "{{ '{0.__class__.__mro__}'.format(1) }}",
    "{{ '{x.environment}'.format_map({'x': range(1)}) }}",
    "{{ ('{0.' ~ 'environment}').format(range(1)) }}",
    "{{ '%s'|format(range(1)) }}",
    # the dict helper, types, classes, modules
    "{{ dict.mro() }}",
    "{{ dict.__class__.__subclasses__() }}",
    "{{ dict(a=1).__class__.__base__.__subclasses__() }}",
    "{{ {}.fromkeys([1]) }}",
    "{{ ''.maketrans('a', 'b') }}",
    "{{ (1).from_bytes(b'x', 'big') }}",
    "{{ 'x'.encode() }}",
    "{{ (1).to_bytes(2, 'big') }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ [].__class__ }}",
    "{{ {}.items().mapping }}",
    # jinja2's own globals are removed
    "{{ cycler.__init__.__globals__.os.system('touch {created}') }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace(a=1) }}",
    "{{ lipsum.__globals__['os'].system('touch {created}') }}",
    "{{ lipsum() }}",
    # template objects
    "{{ self._TemplateReference__context }}",
    "{{ self.__dict__ }}",
    "{% block b %}x{% endblock %}{{ self.b._context }}",
    "{% block b %}x{% endblock %}{{ self.b|attr('_context') }}",
    "{% for i in [1] %}{{ loop._iterable }}{% endfor %}",
    "{% for i in [1] %}{{ loop._undefined }}{% endfor %}",
    "{% for i in [1] %}{{ loop.cycle.__func__ }}{% endfor %}",
    "{% for i in [1] %}{{ loop|attr('_iterator') }}{% endfor %}",
    "{% macro m() %}x{% endmacro %}{{ m._environment }}",
    "{% macro m() %}x{% endmacro %}{{ m._func.__globals__ }}",
    "{% macro m() %}x{% endmacro %}{{ m|attr('_environment') }}",
    "{% macro m() %}{{ caller._environment }}{% endmacro %}{% call m() %}x{% endcall %}",
    "{% macro m() %}{{ varargs.__class__ }}{{ kwargs.__class__ }}{% endmacro %}{{ m(1, a=2) }}",
    # filters and tests that read attributes by name
    "{{ [range(1)]|map(attribute='environment')|list }}",
    "{{ [range(1)]|map('attr', 'environment')|list }}",
    "{{ [range(1)]|sort(attribute='environment') }}",
    "{{ [range(1)]|groupby('environment') }}",
    "{{ [range(1)]|selectattr('environment')|list }}",
    "{{ [range(1)]|rejectattr('environment.loader')|list }}",
    "{{ [range(1)]|sum(attribute='environment') }}",
    "{{ [range(1)]|unique(attribute='environment')|list }}",
    "{{ [range(1)]|max(attribute='environment') }}",
    "{{ [range(1)]|join(attribute='environment') }}",
    "{{ [1]|groupby('__class__') }}",
    "{{ [1, 2]|groupby('real')|map(attribute='list')|map(attribute='__class__')|list }}",
    "{{ range(1)|tojson }}",
    "{{ [1]|pprint }}",
    "{{ {'a': 1}|xmlattr }}",
    "{{ 'x'|urlize }}",
    "{{ (range(3)|batch(2)|first).__class__ }}",
    "{{ ([1]|map('string')).gi_frame }}",
    "{{ ([1]|map('string'))|attr('gi_frame') }}",
    "{{ range(1) is sameas(range(1)) }}",
    # includes and imports stay confined
    "{% include '/etc/hostname' %}",
    "{% include '{marker}' %}",
    "{% import '../../x.j2' as x %}",
]


@pytest.fixture()
def marker(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "marker.txt"
    path.parent.mkdir()
    path.write_text(MARKER_TEXT)
    return path


@pytest.mark.parametrize("attack", ATTACKS)
def test_escape_attempt_fails_in_one_line_and_touches_nothing(attack: str, marker: Path, tmp_path: Path) -> None:
    created = tmp_path / "outside" / "created.py"
    spec = tmp_path / "specs" / "attack.yaml"
    spec.parent.mkdir()
    text = "name: " + attack.replace("{marker}", str(marker)).replace("{created}", str(created)) + "\n"
    spec.write_text(text)
    try:
        rendered = render_spec_template(text, spec)
    except SpecError as err:
        assert "\n" not in str(err)
    else:
        assert MARKER_TEXT not in rendered and str(FAMILY_TEMPLATES) not in rendered, rendered
        assert "Path" not in rendered and "Environment" not in rendered and "Loader" not in rendered, rendered
    assert marker.read_text() == MARKER_TEXT
    assert not created.exists()


# Render bombs: each asks for far more than MAX_RENDERED_CHARS (4 MiB) and must be refused
# before it is built (in a few milliseconds and megabytes, not 1 GB), naming the bound.
S = "{% set s = 'x' * 4000000 %}"
BOMBS: list[str] = [
    S + "{{ ([s] * 1000)|join }}",
    S + "{{ [s, s, s]|join }}",
    S + "{{ [s, s, s]|join(attribute='real') }}",
    S + "{{ ([s, s]|map('upper'))|join }}",
    S + "{{ ''.join([s, s]) }}",
    S + "{{ ','.join([s] * 2) }}",
    S + "{% set l = [s] %}{{ [l, l, l, l]|tojson(indent=4) }}",
    "{{ (range(100000)|list * 40)|tojson(indent=1000) }}",
    "{% set l = range(1000)|list %}{{ [[[[l]]]]|tojson(indent=100000) }}",
    "{{ ('\\n' * 2000000)|indent(100) }}",
    "{{ ('\\n' * 200000)|indent('x' * 1000) }}",
    "{{ ('a' * 2000000)|replace('a', 'bbbbb') }}",
    S + "{{ 'ab'|replace('', s) }}",
    S + "{{ s.replace('x', 'yy') }}",
    S + "{{ '{0}{0}{0}'.format(s) }}",
    S + "{{ '{a}{a}'.format_map({'a': s}) }}",
    S + "{{ '%s%s' % (s, s) }}",
    S + "{{ '%(a)s%(a)s' % {'a': s} }}",
    S + "{{ '%s%s'|format(s, s) }}",
    S + "{{ [s] + [s] }}",
    S + "{% set a = [s, s] %}{% set b = [a, a] %}{% set c = [b, b] %}{{ c }}",
    S + "{% set a = [s, s] %}{{ a|string }}",
    S + "{% set a = [s, s] %}{{ a ~ a }}",
    S + "{% set a = dict(x=s, y=s) %}{{ a }}",
    S + "{{ [[s] * 1] * 2 }}",
    "{% set x = 2 ** 4000 %}{{ x * x }}",
    "{{ ('\\t' * 1000).expandtabs(4000000) }}",
    "{{ 'abc'.translate({97: 'x' * 4000000}) }}",
]


@pytest.mark.parametrize("bomb", BOMBS)
def test_render_bomb_is_refused_before_it_is_built(bomb: str) -> None:
    with pytest.raises(SpecError) as caught:
        render_spec_template(f"name: {bomb}\n", None)
    message = str(caught.value)
    assert "\n" not in message
    bounds = (f"more than the limit of {MAX_RENDERED_CHARS}", "more than 4096 bits", "is unsafe")
    assert any(bound in message for bound in bounds), message


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (
            "{{ range(3)|list }} {{ range(10)[2:4]|list }} {{ 3 in range(5) }} {{ range(4)|length }}",
            "[0, 1, 2] [2, 3] True 4",
        ),
        ("{{ dict(a=1) }} {{ {'a': 1}.items()|list }} {{ {'a': 1}.get('a') }}", "{'a': 1} [('a', 1)] 1"),
        ("{{ '{0.real}-{1}'.format(5, 'x') }} {{ '%s-%d' % ('a', 3) }} {{ 'a,b'.split(',') }}", "5-x a-3 ['a', 'b']"),
        (
            "{{ [1, 2]|groupby('real')|map(attribute='grouper')|list }} {{ [{'a': 1}]|map(attribute='a')|list }}",
            "[1, 2] [1]",
        ),
        ("{% for i in [1, 2] %}{{ loop.index }}{{ loop.cycle('a', 'b') }}{{ loop.length }}{% endfor %}", "1a22b2"),
        ("{% macro m(a) %}{{ m.name }}{{ m.arguments }}{{ a }}{% endmacro %}{{ m(1) }}", "m('a',)1"),
        ("{{ ['a', 'b']|join(',') }} {{ 'ab'|replace('a', 'c') }} {{ 'x\\ny'|indent(2) }}", "a,b cb x\n  y"),
        ("{{ [1, [2]]|tojson(indent=1) }}", "[\n 1,\n [\n  2\n ]\n]"),
    ],
)
def test_plain_templates_still_work(template: str, expected: str) -> None:
    assert render_spec_template(template, None) == expected


# --------------------------------------------------------------------------- reachability

# What a template may hold: plain data and jinja2's template objects (with their attributes
# whitelisted), the two helper functions, and iterators and dict views that expose nothing.
PLAIN = (str, int, float, type(None), list, tuple, dict, jinja2.Undefined)
TEMPLATE_OBJECTS = (Macro, LoopContext, BlockReference, TemplateReference, TemplateModule, DeadlineRange, FormatCall)
OPAQUE = (Iterator, type({}.items()), type({}.keys()), type({}.values()))  # generators, map, reversed...
FORBIDDEN = (Path, types.ModuleType, type, jinja2.Environment, jinja2.BaseLoader, types.FrameType, types.CodeType)
SAMPLES: list[Any] = ["a,b", 3, 2.5, True, None, [1, "x"], (1, 2), {"k": [1]}, [{"a": 1}, {"a": 2}]]
# What the walk starts from: every global, every filter and test applied to the samples, and
# the objects a template gets from loops, macros, blocks and imports (rendered once, below).
PROBE = """\
{%- macro m(a, b=1) %}{{ caller is defined }}{{ varargs }}{{ kwargs }}{% endmacro -%}
{%- block blk %}x{% endblock -%}
{%- macro c() %}{{ capture(caller, varargs, kwargs) }}{% endmacro -%}
{%- call c(1, k=2) %}x{% endcall -%}
{%- import '_families/mlp.j2' as imported -%}
{%- for i in [1, 2] %}{% if loop.first %}{{ capture(loop, m, self, self.blk, imported) }}{% endif %}{% endfor -%}
"""


def reachable_roots() -> list[Any]:
    environment = SpecEnvironment(None)
    captured: list[Any] = []
    environment.globals["capture"] = lambda *objects: captured.extend(objects) or ""
    environment.helpers = (*environment.helpers, environment.globals["capture"])
    environment.from_string(PROBE).render()
    roots: list[Any] = [environment.globals["range"], environment.globals["dict"], environment.globals["range"](5)]
    roots += [environment.globals["range"](5)[1:3], environment.globals["dict"](a=1)]
    for function in environment.filters.values():
        for sample in SAMPLES:
            roots.extend(applied(environment, function, sample))
    for test in environment.tests.values():
        for sample in SAMPLES:
            try:
                roots.append(test(sample))
            except Exception:  # noqa: BLE001 - a test that does not apply to this sample
                pass
    return [*roots, *captured]


def applied(environment: SpecEnvironment, function: Any, sample: Any) -> list[Any]:
    """``function`` applied to ``sample`` as a template would, with and without an argument."""
    results = []
    context = environment.from_string("").new_context()
    for extra in ((), (1,), ("a",), ("real",)):
        template_args = (sample, *extra)
        try:
            pass_arg = getattr(function, "jinja_pass_arg", None)
            first = {"context": context, "eval_context": context.eval_ctx, "environment": environment}.get(
                getattr(pass_arg, "name", ""), None
            )
            value = function(first, *template_args) if first is not None else function(*template_args)
            results.append(value)
            if isinstance(value, types.GeneratorType):
                results.append(list(value))
        except Exception:  # noqa: BLE001 - a filter that does not apply to this sample
            pass
    return results


def children(environment: SpecEnvironment, value: Any) -> list[tuple[str, Any]]:
    """Everything the sandbox hands out from ``value``: public attributes and items."""
    found = []
    for name in dir(value):
        got = environment.getattr(value, name)
        if not isinstance(got, jinja2.Undefined):
            found.append((f".{name}", got))
    if isinstance(value, dict):
        found += [(f"[{k!r}]", v) for k, v in value.items()]
    elif isinstance(value, (list, tuple)):
        found += [(f"[{i}]", v) for i, v in enumerate(value[:5])]
    return found


def test_everything_reachable_is_plain_data_or_a_template_object() -> None:
    environment = SpecEnvironment(None)
    queue = deque((f"root{i}", value, 0) for i, value in enumerate(reachable_roots()))
    seen: set[int] = set()
    checked = 0
    while queue:
        path, value, depth = queue.popleft()
        assert not isinstance(value, FORBIDDEN), f"{path} reaches {type(value).__name__}: {value!r}"[:300]
        if isinstance(value, types.FunctionType):
            assert value.__name__ in ("spec_range", "spec_dict"), f"{path}: function {value.__name__}"
        elif isinstance(value, (types.MethodType, types.BuiltinMethodType)):
            assert isinstance(value.__self__, (*PLAIN, LoopContext)), f"{path}: a method of {type(value.__self__)}"
        else:
            assert isinstance(value, (*PLAIN, *TEMPLATE_OBJECTS, *OPAQUE)), f"{path}: {type(value).__name__}"
        if isinstance(value, OPAQUE) and not isinstance(value, TEMPLATE_OBJECTS):
            assert not [name for name, _ in children(environment, value) if not name.startswith("[")], path
        if id(value) in seen or depth >= 4:
            continue
        seen.add(id(value))
        checked += 1
        queue.extend((path + name, child, depth + 1) for name, child in children(environment, value))
    assert checked > 200  # the walk did reach the filters' results, loop, macros and blocks


def test_a_spec_has_no_random_filter() -> None:
    """A spec renders the same every time: plans, run folders and the harness compare it."""
    with pytest.raises(SpecError, match="No filter named 'random'"):
        render_spec_template("name: m{{ [1, 2, 3]|random }}\n", None)
