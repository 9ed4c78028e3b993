"""What a file given to uhn is, in one place: ``load_source`` tells a plan file (``*.pt``)
from a spec file of each mode (``uhn_spec.modes``) and loads it as a ``Source``.

A spec file's mode is the top-level key it has: ``leaf`` (recursive), ``tasks`` (multitask),
``template``/``sample``/``members`` (family); a file with none, or a jinja2 template that is
not YAML before rendering, is a single spec. Several single specs load as one source (one
plan with shared normalisation ranges); every other kind comes alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .compiler import compile_specs
from .errors import SpecError, UHNError
from .files import PLAN_SUFFIX
from .loading import read_spec_text
from .modes import family, multitask, recursive, single
from .plan import Mode, Plan, load_plan
from .safe_yaml import load_yaml
from .spec import ExperimentSpec


@dataclass(frozen=True)
class ModeFile:
    """How one mode's file is recognised, loaded and compiled."""

    mode: Mode
    what: str  # as an error names it: "give one family file or only specs"
    keys: tuple[str, ...]  # top-level keys that make a file this mode's
    load: Callable[[Path, list[str]], Any]
    members: Callable[[Any], list[ExperimentSpec]]  # the specs whose memory is checked
    compile: Callable[[Any, str], Plan]


# In the order a file is tested against them. A new mode adds its module and one line here.
MODE_FILES = (
    ModeFile(
        "recursive",
        "recursive spec",
        recursive.KEYS,
        recursive.load_recursive,
        lambda loaded: loaded[1][-1:],
        lambda loaded, text: recursive.compile_recursive(loaded[1], text),
    ),
    ModeFile(
        "multitask",
        "multi-task spec",
        multitask.KEYS,
        multitask.load_multitask,
        lambda loaded: list(loaded.members),
        multitask.compile_multitask,
    ),
    ModeFile(
        "family",
        "family file",
        family.KEYS,
        family.load_family,
        lambda loaded: [member.spec for member in loaded.members],
        family.compile_family,
    ),
)


@dataclass(frozen=True)
class Source:
    """A loaded file (or several single specs). ``kind`` is ``plan`` or the mode; ``loaded`` is
    what the mode's loader returns (``Plan``, a list of ``ExperimentSpec``, ``Family``,
    ``MultiTask``, or the recursive spec and its chain); ``checked`` pairs each spec to check
    against this machine's memory with the file it came from."""

    kind: Mode | str
    paths: tuple[Path, ...]
    overrides: tuple[str, ...]
    loaded: Any
    checked: tuple[tuple[Path, ExperimentSpec], ...]
    compile_with: Callable[[Any, str], Plan] | None = None

    def plan(self) -> Plan:
        """The plan: a plan file as saved, else the specs compiled now."""
        if self.compile_with is None:
            return self.loaded
        return self.compile_with(self.loaded, source_text(self.paths, self.overrides))


def is_plan_path(path: Path) -> bool:
    return Path(path).suffix == PLAN_SUFFIX


def file_mode(path: Path) -> ModeFile | None:
    """The mode of a spec file by its top-level keys; None for a single spec (or a file that
    does not read as YAML: ``load_spec`` then says what is wrong with it)."""
    try:
        data = load_yaml(read_spec_text(Path(path)))
    except SpecError:
        return None
    if not isinstance(data, dict):
        return None
    return next((kind for kind in MODE_FILES if any(key in data for key in kind.keys)), None)


def load_source(paths: Path | str | Sequence[Path | str], overrides: Sequence[str] = ()) -> Source:
    """One plan file; one recursive, multi-task or family file; or one or more single specs
    (compiled into one plan)."""
    paths = tuple(Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths))
    overrides = tuple(overrides)
    shown = ", ".join(map(str, paths))
    plans = [p for p in paths if is_plan_path(p)]
    if plans:
        if len(paths) > 1:
            raise UHNError(f"give one plan file or only specs, got {shown}")
        if overrides:
            recompile = f"recompile {plans[0]} with `uhn compile SPEC --set ...`"
            raise UHNError(f"--set changes specs, not compiled plans; {recompile}")
        plan = load_plan(plans[0])
        return Source("plan", paths, overrides, plan, tuple((plans[0], t.spec) for t in plan.targets))
    modes = [file_mode(p) for p in paths]
    for kind in MODE_FILES:
        if kind not in modes:
            continue
        if len(paths) > 1:
            raise UHNError(f"give one {kind.what} or only specs, got {shown}")
        loaded = kind.load(paths[0], list(overrides))
        checked = tuple((paths[0], spec) for spec in kind.members(loaded))
        return Source(kind.mode, paths, overrides, loaded, checked, kind.compile)
    specs = [single.load_spec(p, list(overrides)) for p in paths]
    return Source("single", paths, overrides, specs, tuple(zip(paths, specs)), compile_specs)


def source_text(paths: Sequence[Path], overrides: Sequence[str]) -> str:
    """What a plan records as its source: the spec files as written, then the overrides
    (as YAML comments), so the plan's hash changes with either."""
    parts = [read_spec_text(p) for p in paths]
    text = "---\n".join(part if part.endswith("\n") else part + "\n" for part in parts)
    return text + "".join(f"# --set {item}\n" for item in overrides)


__all__ = ["MODE_FILES", "PLAN_SUFFIX", "ModeFile", "Source", "file_mode", "is_plan_path", "load_source", "source_text"]
