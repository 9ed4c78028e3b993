"""Spec templates rendered in a sandbox: a spec file is data, never code.

Specs are jinja2 templates so that model families can loop over layers. A spec may come from
anyone, so rendering neither runs code nor exhausts the machine:

* jinja2's immutable sandbox refuses attribute escapes (``cycler.__init__.__globals__``) and
  mutation; the only globals are ``range`` (at most 100,000 items) and ``dict``.
* Every string or list a template builds (``*``, ``+``, ``~``, ``%``, printed values, numbers
  handed to filters and methods) stays under ``MAX_RENDERED_CHARS``, ``**`` under
  ``MAX_POWER_BITS``, and rendering under ``RENDER_SECONDS`` (SIGALRM in the main thread, plus a
  check on every ``range`` step and call, which also covers other threads).
* Includes and imports resolve only inside the spec's folder and the family folder
  (``_families/...``); ``..``, absolute paths and symbolic links out of them are refused.

Any failure becomes a ``SpecError`` whose path is the template line, e.g. ``line 3``.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import signal
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
from jinja2.compiler import CodeGenerator, Frame
from jinja2.nodes import Concat, EvalContext
from jinja2.runtime import Context, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range

from .errors import SpecError
from .received import ReceivedFileError, read_received_bytes
from .sandbox import (
    REMOVED_FILTERS,
    DeadlineRange,
    FormatCall,
    RenderLimitError,
    bounded_items,
    format_values,
    formatted_size,
    joined_size,
    readable_attribute,
    replaced_size,
    safe_callable,
    safe_value,
    text_size,
)

FAMILY_PREFIX = "_families"
FAMILY_TEMPLATES = Path(__file__).resolve().parent.parent / "specs" / FAMILY_PREFIX
MAX_RENDERED_CHARS = 4 * 2**20
MAX_POWER_BITS = 4096
RENDER_SECONDS = 3.0
# The alarm is the backstop for loops that call nothing (``for x in [1] * 4000000``); the
# per-step checks fire first where they can and give the template line.
ALARM_GRACE_SECONDS = 0.5
SPEC_TEMPLATE_NAME = "<template>"  # what jinja2 calls a template made from a string


class ConfinedLoader(jinja2.BaseLoader):
    """Loads ``name`` from the spec's folder, or ``_families/name`` from the family folder;
    never a file outside them (``..``, absolute paths and links out are refused)."""

    def __init__(self, spec_folder: Path | None):
        self.roots: list[tuple[str, Path]] = [(FAMILY_PREFIX + "/", FAMILY_TEMPLATES)]
        if spec_folder is not None:
            self.roots.append(("", spec_folder))

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        if template.startswith("/") or "\\" in template or ".." in template.split("/"):
            raise jinja2.TemplateNotFound(template, f"{template!r}: {self.confinement()}")
        for prefix, folder in self.roots:
            if not template.startswith(prefix):
                continue
            candidate = folder / template[len(prefix) :]
            resolved = candidate.resolve()
            if not resolved.is_relative_to(folder.resolve()):
                raise jinja2.TemplateNotFound(template, f"{template!r} links out of {folder}: {self.confinement()}")
            if resolved.is_file():
                return read_template(resolved, template), str(candidate), lambda: True
        raise jinja2.TemplateNotFound(template, f"{template!r} not found; {self.confinement()}")

    def confinement(self) -> str:
        spec_folder = [f"the spec's folder {folder}" for prefix, folder in self.roots if not prefix]
        return (
            "includes and imports resolve only inside "
            f"{' and '.join([*spec_folder, f'{FAMILY_PREFIX}/ ({FAMILY_TEMPLATES})'])}"
        )


def read_template(path: Path, name: str) -> str:
    """An included or imported template's text, read as a spec is (``read_spec_file``)."""
    try:
        return read_spec_file(path, encoding="utf-8")
    except SpecError as err:
        raise RenderLimitError(f"{name!r}: {err.message}") from None


def read_spec_file(path: Path, encoding: str = "utf-8-sig") -> str:
    """The text of a spec, template, include or overlay file: at most MAX_RENDERED_CHARS bytes
    of a regular file (``read_received_bytes``), or a one-line SpecError naming the file."""
    try:
        data = read_received_bytes(path, MAX_RENDERED_CHARS, "spec file")
    except ReceivedFileError as err:
        raise SpecError("", str(err)) from None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        raise SpecError(f"byte {err.start}", f"not UTF-8 text ({err.reason}); save it as UTF-8", str(path)) from None


class BoundedCodeGenerator(CodeGenerator):
    """Compiles ``a ~ b`` to a length-checked join (jinja2 has no hook for it)."""

    def visit_Concat(self, node: Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class SpecEnvironment(ImmutableSandboxedEnvironment):
    """One rendering: the whitelist sandbox (``sandbox.py``) plus size and time bounds (one
    instance per spec)."""

    code_generator_class = BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, spec_folder: Path | None):
        super().__init__(
            loader=ConfinedLoader(spec_folder),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            cache_size=0,
            finalize=self.count_printed,
        )
        self.deadline = time.monotonic() + RENDER_SECONDS
        self.printed = 0
        check_deadline = self.check_deadline

        def spec_range(*args: int) -> DeadlineRange:
            return DeadlineRange(safe_range(*args), check_deadline)

        def spec_dict(*args: Any, **kwargs: Any) -> dict[Any, Any]:
            return dict(*args, **kwargs)

        # Closures, not methods: nothing of the environment hangs off a global.
        self.globals.clear()
        self.globals.update(range=spec_range, dict=spec_dict)
        self.helpers = (spec_range, spec_dict)
        kept = {name: f for name, f in self.filters.items() if name not in REMOVED_FILTERS}
        self.filters = {name: self.bounded_filter(name, f) for name, f in kept.items()}

    # --- bounds -----------------------------------------------------------------------
    def check_deadline(self) -> None:
        if time.monotonic() > self.deadline:
            raise RenderLimitError(f"rendering took longer than {RENDER_SECONDS:g} s; is a loop too long?")

    def check_size(self, size: int, what: str) -> None:
        if size > MAX_RENDERED_CHARS:
            raise RenderLimitError(f"{what} would hold {size} items, more than the limit of {MAX_RENDERED_CHARS}")

    def check_text(self, value: Any, what: str, indent: int = 0) -> None:
        """``str(value)`` (or its JSON) stays under the bound: checked before it is built."""
        if not isinstance(value, str):
            self.check_size(text_size(value, MAX_RENDERED_CHARS, indent), what)

    def check_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any], what: str) -> None:
        """Numbers handed to filters and methods (``center(10**9)``, ``ljust``) are widths."""
        for value in (*args, *kwargs.values()):
            if isinstance(value, int) and abs(value) > MAX_RENDERED_CHARS:
                raise RenderLimitError(f"{what}: argument {value} is larger than {MAX_RENDERED_CHARS}")

    def check_format(self, text: str, what: str) -> None:
        """Widths and precisions in a format string (``%9999999d``, ``{:9999999}``)."""
        if any(len(digits) > 7 or int(digits) > MAX_RENDERED_CHARS for digits in re.findall(r"\d+", text)):
            raise RenderLimitError(f"{what}: a number in {text[:40]!r} is larger than {MAX_RENDERED_CHARS}")

    def check_formatted(self, template: str, values: list[Any], what: str) -> None:
        self.check_format(template, what)
        self.check_size(formatted_size(template, values, MAX_RENDERED_CHARS), f"the result of {what}")

    def count_printed(self, value: Any) -> Any:
        self.check_text(value, "a printed value")
        text = value if isinstance(value, str) else str(value)
        self.printed += len(text)
        self.check_size(self.printed, "the rendered spec")
        return value

    def bounded_filter(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        signature = filter_signature(func)

        @functools.wraps(func)
        def bounded(*args: Any, **kwargs: Any) -> Any:
            self.check_deadline()
            values = [a for a in args if not isinstance(a, (Context, EvalContext, jinja2.Environment))]
            self.check_arguments(tuple(values[1:]), kwargs, f"filter {name}")
            call = signature.bind(*values, **kwargs)
            self.check_filter_output(name, call.arguments)
            result = func(*args[: len(args) - len(values)], *call.args, **call.kwargs)
            if isinstance(result, (str, list)):
                self.check_size(len(result), f"the result of filter {name}")
            return result

        return bounded

    def check_filter_output(self, name: str, arguments: dict[str, Any]) -> None:
        """Estimate what filter ``name`` would build before it builds it; a generator argument
        of ``join`` is read into a list (``arguments`` is updated) to be measured."""
        what = f"the result of filter {name}"
        value = arguments.get("value", arguments.get("s"))
        if name == "join":
            if not isinstance(value, (list, tuple, str)):
                value = arguments["value"] = bounded_items(value, MAX_RENDERED_CHARS)
            self.check_size(joined_size(str(arguments.get("d", "")), list(value), MAX_RENDERED_CHARS), what)
        elif name == "format" and isinstance(value, str):
            values = format_values(arguments.get("kwargs") or arguments.get("args", ()))
            self.check_formatted(value, values, f"filter {name}")
        elif name in ("string", "tojson", "replace", "indent", "center", "truncate", "title", "upper", "lower"):
            indent = arguments.get("indent") or 0
            self.check_text(value, what, len(indent) if isinstance(indent, str) else int(indent))
            text = value if isinstance(value, str) else None
            if name == "replace" and text is not None:
                old, new = (str(arguments.get(k, "")) for k in ("old", "new"))
                self.check_size(replaced_size(text, old, new, arguments.get("count")), what)
            if name == "indent" and text is not None:
                width = arguments.get("width", 4)
                prefix = len(width) if isinstance(width, str) else int(width)
                self.check_size(len(text) + prefix * (text.count("\n") + 1), what)

    # --- sandbox hooks ------------------------------------------------------------------
    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        """The whitelist (``sandbox.py``): public attributes of plain data and of jinja2's
        template objects, whose value is again one of them or a method of ``obj``."""
        return super().is_safe_attribute(obj, attr, value) and readable_attribute(obj, attr) and safe_value(obj, value)

    def is_safe_callable(self, obj: Any) -> bool:
        return super().is_safe_callable(obj) and safe_callable(obj, self.helpers)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        __self.check_deadline()
        if not isinstance(__obj, Macro) and not any(__obj is helper for helper in __self.helpers):
            __self.check_arguments(args, kwargs, f"calling {getattr(__obj, '__name__', 'a function')}")
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str) and __obj.__name__ in ("join", "replace") and args:
            what = f"the result of {__obj.__name__}"
            if __obj.__name__ == "join":
                args = (bounded_items(args[0], MAX_RENDERED_CHARS), *args[1:])
                __self.check_size(joined_size(owner, args[0], MAX_RENDERED_CHARS), what)
            elif all(isinstance(a, str) for a in args[:2]) and len(args) >= 2:
                __self.check_size(replaced_size(owner, args[0], args[1], *args[2:3]), what)
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        self.check_deadline()
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
            if right * math.log2(abs(left)) > MAX_POWER_BITS:
                raise RenderLimitError(f"{left} ** {right} has more than {MAX_POWER_BITS} bits")
        if operator == "*":
            self.check_product(left, right)
        if operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
            self.check_size(len(left) + len(right), f"a {type(left).__name__} + {type(right).__name__}")
            size = sum(text_size(side, MAX_RENDERED_CHARS, strings_only=True) for side in (left, right))
            self.check_size(size, f"the strings of a {type(left).__name__} + {type(right).__name__}")
        if operator == "%" and isinstance(left, str):
            self.check_formatted(left, format_values(right), "%-formatting")
        return super().call_binop(context, operator, left, right)

    def check_product(self, left: Any, right: Any) -> None:
        """``seq * n`` holds at most the bound in items and in text; ``int * int`` at most
        MAX_POWER_BITS bits (repeated squaring would grow without end)."""
        if all(isinstance(v, int) for v in (left, right)) and left.bit_length() + right.bit_length() > MAX_POWER_BITS:
            bits = f"{left.bit_length()}- and {right.bit_length()}-bit"
            raise RenderLimitError(f"a product of {bits} numbers has more than {MAX_POWER_BITS} bits")
        for sequence, count in ((left, right), (right, left)):
            if isinstance(sequence, (str, list, tuple)) and isinstance(count, int) and count > 0:
                what = f"a {type(sequence).__name__} * {count}"
                self.check_size(len(sequence) * count, what)
                held = text_size(sequence, MAX_RENDERED_CHARS, strings_only=True)
                self.check_size(held * count, f"the strings of {what}")

    def bounded_concat(self, values: tuple[Any, ...]) -> str:
        for value in values:
            self.check_text(value, "a ~ concatenation")
        parts = [str(v) for v in values]
        self.check_size(sum(map(len, parts)), "a ~ concatenation")
        return "".join(parts)

    def wrap_str_format(self, value: Any) -> FormatCall | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        template = value.__self__

        def bounded_format(*args: Any, **kwargs: Any) -> str:
            self.check_formatted(template, format_values((*args, kwargs)), "str.format")
            return wrapped(*args, **kwargs)

        return FormatCall(bounded_format)


def filter_signature(func: Callable[..., Any]) -> inspect.Signature:
    """A filter's parameters as a template passes them: without the context, eval context or
    environment jinja2 passes first (async variants take theirs before the wrapped function)."""
    signature = inspect.signature(func)
    parameters = list(signature.parameters.values())
    if parameters and parameters[0].name in ("context", "eval_ctx", "environment"):
        signature = signature.replace(parameters=parameters[1:])
    return signature


# --------------------------------------------------------------------------- rendering


def render_spec_template(text: str, source: Path | None, variables: dict[str, Any] | None = None) -> str:
    """Render ``text`` (the spec at ``source``) in the sandbox; raise a one-line SpecError."""
    where = str(source) if source else None
    environment = SpecEnvironment(source.parent if source else None)
    try:
        with RenderAlarm(RENDER_SECONDS + ALARM_GRACE_SECONDS, RENDER_SECONDS):
            template = compile_template(environment, text)
            rendered = []
            size = 0
            for chunk in template.generate(**(variables or {})):
                size += len(chunk)
                environment.check_size(size, "the rendered spec")
                rendered.append(chunk)
            return "".join(rendered)
    except jinja2.TemplateSyntaxError as err:
        location = template_location(err.filename, err.lineno)
        raise SpecError(location, f"template syntax error: {err.message}", where) from None
    except SyntaxError as err:  # Python's compiler refusing the code jinja2 made of a template
        raise SpecError("", f"template error: {TOO_DEEP_TO_COMPILE} ({err.msg})", where) from None
    except RENDER_ERRORS as err:
        raise SpecError(error_location(err), f"template error: {describe(err)}", where) from None


TOO_DEEP_TO_COMPILE = "the template nests blocks or expressions too deeply to compile; nest fewer for/if/macro blocks"


def compile_template(environment: SpecEnvironment, text: str) -> jinja2.Template:
    """``text`` compiled; Python's own limits on nesting (``too many statically nested
    blocks``, the recursion limit of its compiler) become a TemplateError."""
    try:
        return environment.from_string(text)
    except (SyntaxError, RecursionError) as err:
        detail = err.msg if isinstance(err, SyntaxError) else "maximum recursion depth exceeded"
        raise jinja2.TemplateError(f"{TOO_DEEP_TO_COMPILE} ({detail})") from None


# Everything rendering a user's template can raise: its own errors (undefined names, bad macro
# arguments, 32 // 0, huge numbers, deep recursion), not bugs in uhn.
RENDER_ERRORS = (jinja2.TemplateError, ArithmeticError, TypeError, ValueError, LookupError, RecursionError, MemoryError)


def describe(err: BaseException) -> str:
    message = str(err).splitlines()[0] if str(err) else ""
    if isinstance(err, jinja2.TemplateError):
        return message or type(err).__name__
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


def error_location(err: BaseException) -> str:
    """The template line of a runtime error: jinja2 rewrites its traceback to template lines."""
    for frame in reversed(traceback.extract_tb(err.__traceback__)):
        if frame.filename == SPEC_TEMPLATE_NAME or frame.filename.endswith((".j2", ".yaml", ".yml")):
            return template_location(frame.filename, frame.lineno)
    return ""


def template_location(filename: str | None, line: int | None) -> str:
    where = "" if filename in (None, SPEC_TEMPLATE_NAME) else f"{filename} "
    return f"{where}line {line}" if line else where.strip()


class RenderAlarm:
    """Raise RenderLimitError after ``seconds`` (main thread only; elsewhere a no-op, where
    the per-step checks still bound the time). The message names ``limit``, the bound the user
    sees: the alarm fires a grace period after it, and which of the two stops a busy machine's
    render first must not change what the error says."""

    def __init__(self, seconds: float, limit: float):
        self.seconds = seconds
        self.limit = limit
        self.armed = False
        self.fired = False
        self.previous: Any = None

    def __enter__(self) -> RenderAlarm:
        usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
        if usable and signal.getitimer(signal.ITIMER_REAL)[0] == 0:
            self.previous = signal.signal(signal.SIGALRM, self.expire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
            self.armed = True
        return self

    def expire(self, signum: int, frame: Any) -> None:
        if self.armed and not self.fired:
            self.fired = True
            raise RenderLimitError(f"rendering took longer than {self.limit:g} s; is a loop too long?")

    def __exit__(self, *exc: Any) -> None:
        if self.armed:
            self.armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)


__all__ = ["FAMILY_TEMPLATES", "MAX_RENDERED_CHARS", "RENDER_SECONDS", "render_spec_template"]
