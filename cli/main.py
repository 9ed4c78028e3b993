"""The ``uhn`` typer app and what every command module shares.

Register a command with ``@command()`` (below): it is an ``app.command`` whose expected
failures -- uhn's own errors (a bad spec, a corrupt plan, a model too large for this machine)
and a file that cannot be read -- print one line ``error: ...`` to stderr and exit with code
2. Anything else is a bug in uhn and shows its traceback.

Command modules import torch and the runtime inside their commands, not at module level, so
that ``uhn --help`` and argument errors answer at once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from uhn_spec.budget import Budget, Purpose, check_spec_fits, format_bytes
from uhn_spec.errors import UHNError

from .options import fail

if TYPE_CHECKING:
    from uhn_spec import ExperimentSpec, Plan

PLAN_SUFFIX = ".pt"

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

    return wrapper  # type: ignore[return-value]


def command(name: str | None = None, **kwargs: Any) -> Callable[[F], F]:
    """``app.command`` with ``reports_errors``: how every command module registers a command."""

    def register(func: F) -> F:
        app.command(name, **kwargs)(reports_errors(func))
        return func

    return register


def is_plan_path(path: Path) -> bool:
    return path.suffix == PLAN_SUFFIX


def load_target_source(path: Path, overrides: list[str] | None = None, purpose: Purpose = "compile") -> Plan:
    """A plan file (``*.pt``) as saved, or a spec YAML compiled now (with ``--set`` applied).
    ``purpose="train"`` also refuses a target whose training cannot fit this machine."""
    return load_target_sources([path], overrides, purpose)


def load_target_sources(paths: list[Path], overrides: list[str] | None = None, purpose: Purpose = "compile") -> Plan:
    """One plan file; one recursive, multi-task or family file; or one or more specs compiled
    into one plan (shared normalisation). Each target is checked against this machine's
    memory before anything is allocated."""
    from uhn_spec import compile_specs, load_plan, load_spec
    from uhn_spec.family import is_family_file
    from uhn_spec.multitask import is_multitask_file
    from uhn_spec.recursive import is_recursive_file

    overrides = list(overrides or [])
    plans = [p for p in paths if is_plan_path(p)]
    if plans:
        if len(paths) > 1:
            raise UHNError(f"give one plan file or only specs, got {', '.join(map(str, paths))}")
        if overrides:
            raise UHNError(f"--set changes specs, not compiled plans; recompile {plans[0]} with `uhn compile SPEC --set ...`")
        plan = load_plan(plans[0])
        if purpose == "train":
            for target in plan.targets:
                fitting_budget(target.spec, plans[0], "train")
        return plan
    whole_file_kinds = (
        ("recursive spec", is_recursive_file, _recursive_file),
        ("multi-task spec", is_multitask_file, _multitask_file),
        ("family file", is_family_file, _family_file),
    )
    for what, is_kind, load in whole_file_kinds:
        found = [p for p in paths if is_kind(p)]
        if not found:
            continue
        if len(paths) > 1:
            raise UHNError(f"give one {what} or only specs, got {', '.join(map(str, paths))}")
        members, compile_plan = load(found[0], overrides)
        for spec in members:
            fitting_budget(spec, found[0], *dict.fromkeys(("compile", purpose)))  # type: ignore[arg-type]
        return compile_plan(source_text(paths, overrides))
    specs = [load_spec(p, overrides) for p in paths]
    for path, spec in zip(paths, specs):
        fitting_budget(spec, path, *dict.fromkeys(("compile", purpose)))  # type: ignore[arg-type]
    return compile_specs(specs, source_text=source_text(paths, overrides))


# A file that compiles to a plan of several targets as a whole: its specs to check against
# this machine's memory, and how to compile it (given the plan's source text).
WholeFile = tuple[list["ExperimentSpec"], Callable[[str], "Plan"]]


def _recursive_file(path: Path, overrides: list[str]) -> WholeFile:
    from uhn_spec.recursive import compile_recursive, load_recursive

    _, chain = load_recursive(path, overrides)
    return chain[-1:], lambda text: compile_recursive(chain, text)


def _multitask_file(path: Path, overrides: list[str]) -> WholeFile:
    from uhn_spec.multitask import compile_multitask, load_multitask

    multitask = load_multitask(path, overrides)
    return list(multitask.members), lambda text: compile_multitask(multitask, text)


def _family_file(path: Path, overrides: list[str]) -> WholeFile:
    from uhn_spec.family import compile_family, load_family

    family = load_family(path, overrides)
    return [member.spec for member in family.members], lambda text: compile_family(family, text)


def fitting_budget(spec: ExperimentSpec, path: Path, *purposes: Purpose) -> Budget:
    """The spec's memory budget; refuses (naming ``path``) a target that does not fit this
    machine for any of ``purposes``, before anything is allocated."""
    return check_spec_fits(spec, str(path), *purposes)


def source_text(paths: list[Path], overrides: list[str]) -> str:
    """What a plan records as its source: the spec files as written, then the overrides
    (as YAML comments), so the plan's hash changes with either."""
    from uhn_spec.spec import read_spec_text

    parts = [read_spec_text(p) for p in paths]
    text = "---\n".join(part if part.endswith("\n") else part + "\n" for part in parts)
    return text + "".join(f"# --set {item}\n" for item in overrides)


human_bytes = format_bytes


# Command modules: each registers its commands on `app` when imported. Add one line per module.
from . import spec_commands  # noqa: E402,F401
from . import train_commands  # noqa: E402,F401
from . import data_commands  # noqa: E402,F401
from . import bench_commands  # noqa: E402,F401
from . import plot_commands  # noqa: E402,F401
from . import reproduce_commands  # noqa: E402,F401
from . import import_commands  # noqa: E402,F401
