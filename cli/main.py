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

from uhn_spec.budget import Budget, Purpose, check_fits, estimate_budget, format_bytes
from uhn_spec.errors import SpecError, UHNError

if TYPE_CHECKING:
    from uhn_spec import ExperimentSpec, Plan

EXIT_USER_ERROR = 2
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


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` to stderr; raise the returned Exit (code 2)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_USER_ERROR)


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
    """One plan file, one family file, one multi-task file, or one or more specs compiled into one plan (shared
    normalisation); each target is checked against this machine's memory before anything is
    allocated."""
    from uhn_spec import compile_specs, load_plan, load_spec
    from uhn_spec.family import compile_family, is_family_file, load_family
    from uhn_spec.multitask import compile_multitask, is_multitask_file, load_multitask
    from uhn_spec.recursive import compile_recursive, is_recursive_file, load_recursive

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
    recursive = [p for p in paths if is_recursive_file(p)]
    if recursive:
        if len(paths) > 1:
            raise UHNError(f"give one recursive spec or only specs, got {', '.join(map(str, paths))}")
        _, chain = load_recursive(recursive[0], overrides)
        fitting_budget(chain[-1], recursive[0], *dict.fromkeys(("compile", purpose)))  # type: ignore[arg-type]
        return compile_recursive(chain, source_text(paths, overrides))
    multitasks = [p for p in paths if is_multitask_file(p)]
    if multitasks:
        if len(paths) > 1:
            raise UHNError(f"give one multi-task spec or only specs, got {', '.join(map(str, paths))}")
        multitask = load_multitask(multitasks[0], overrides)
        for member in multitask.members:
            fitting_budget(member, multitasks[0], *dict.fromkeys(("compile", purpose)))  # type: ignore[arg-type]
        return compile_multitask(multitask, source_text(paths, overrides))
    families = [p for p in paths if is_family_file(p)]
    if families:
        if len(paths) > 1:
            raise UHNError(f"give one family file or only specs, got {', '.join(map(str, paths))}")
        family = load_family(families[0], overrides)
        for member in family.members:
            fitting_budget(member.spec, families[0], *dict.fromkeys(("compile", purpose)))  # type: ignore[arg-type]
        return compile_family(family, source_text(paths, overrides))
    specs = [load_spec(p, overrides) for p in paths]
    for path, spec in zip(paths, specs):
        fitting_budget(spec, path, *dict.fromkeys(("compile", purpose)))  # type: ignore[arg-type]
    return compile_specs(specs, source_text=source_text(paths, overrides))


def fitting_budget(spec: ExperimentSpec, path: Path, *purposes: Purpose) -> Budget:
    """The spec's memory budget; refuses (naming ``path``) a target that does not fit this
    machine for any of ``purposes``, before anything is allocated."""
    try:
        budget = estimate_budget(spec)
    except SpecError as err:
        raise SpecError(err.path, err.message, str(path)) from None
    for purpose in purposes:
        check_fits(budget, purpose, str(path))
    return budget


def source_text(paths: list[Path], overrides: list[str]) -> str:
    """What a plan records as its source: the spec files as written, then the overrides
    (as YAML comments), so the plan's hash changes with either."""
    parts = [p.read_text() for p in paths]
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
