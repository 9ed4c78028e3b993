"""The ``uhn`` typer app and what every command module shares.

Command modules import from here and ``main.py`` imports them, so imports run one way:
``main -> *_commands -> app``. Register a command with ``@command()`` (below): it is an
``app.command`` whose expected failures -- uhn's own errors (a bad spec, a corrupt plan, a
model too large for this machine) and a file that cannot be read -- print one line
``error: ...`` to stderr and exit with code 2. Anything else is a bug in uhn and shows its
traceback.

Command modules import torch and the runtime inside their commands, not at module level, so
that ``uhn --help`` and argument errors answer at once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

import typer

from uhn_spec.budget import Budget, Purpose, check_spec_fits, format_bytes
from uhn_spec.errors import UHNError

from .options import fail

if TYPE_CHECKING:
    from uhn_spec import ExperimentSpec, Plan


app = typer.Typer(
    name="uhn",
    help="Universal Hypernetworks: compile model specs and generate, train and export their weights.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

F = TypeVar("F", bound=Callable[..., Any])

# Repeatable ``--set PATH=VALUE``: overrides a spec field after the file is read, e.g.
# ``--set train.epochs=3 --set layers[1].dropout=0.1``. VALUE is parsed as YAML.
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="PATH=VALUE",
        help="Override a spec field (repeatable), e.g. --set train.lr=2e-4 --set layers[1].dropout=0.1",
    ),
]


def reports_errors(func: F) -> F:
    """Turn the errors a user can cause into one stderr line and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UHNError as err:
            raise fail(str(err)) from None
        except FileNotFoundError as err:
            raise fail(f"file not found: {err.filename or err}") from None
        except (IsADirectoryError, NotADirectoryError, PermissionError) as err:
            raise fail(f"{err.filename or ''}: {err.strerror or err}") from None

    return cast(F, wrapper)


def command(name: str | None = None, **kwargs: Any) -> Callable[[F], F]:
    """``app.command`` with ``reports_errors``: how every command module registers a command."""

    def register(func: F) -> F:
        app.command(name, **kwargs)(reports_errors(func))
        return func

    return register


def load_target_source(path: Path, overrides: list[str] | None = None, purpose: Purpose = "compile") -> Plan:
    """A plan file (``*.pt``) as saved, or a spec YAML compiled now (with ``--set`` applied).
    ``purpose="train"`` also refuses a target whose training cannot fit this machine."""
    return load_target_sources([path], overrides, purpose)


def load_target_sources(paths: list[Path], overrides: list[str] | None = None, purpose: Purpose = "compile") -> Plan:
    """What ``uhn_spec.load_source`` reads from ``paths``, as a plan; each target is checked
    against this machine's memory before anything is allocated (a plan's only for training)."""
    from uhn_spec.source import load_source

    source = load_source(paths, overrides or [])
    purposes = ("train",) if source.kind == "plan" else tuple(dict.fromkeys(("compile", purpose)))
    if source.kind != "plan" or purpose == "train":
        for path, spec in source.checked:
            fitting_budget(spec, path, *purposes)
    return source.plan()


def fitting_budget(spec: ExperimentSpec, path: Path, *purposes: Purpose) -> Budget:
    """The spec's memory budget; refuses (naming ``path``) a target that does not fit this
    machine for any of ``purposes``, before anything is allocated."""
    return check_spec_fits(spec, str(path), *purposes)


human_bytes = format_bytes
