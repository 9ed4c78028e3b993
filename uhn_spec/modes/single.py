"""Mode ``single``: one spec file, one target. Its loader is also how every other mode reads
its members (``member_spec``).

``load_spec`` reads a file (rendered as a sandboxed jinja2 template first, so model families
can loop over layers), parses it as YAML (duplicate keys refused), applies ``--set PATH=VALUE``
overrides and validates everything, including the cross-layer checks (sizes chain from layer
to layer) and that every number is finite and fits 64 bits. Every error names its YAML path.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import SpecError
from ..layers.exported import resolve_graph_files
from ..loading import apply_overrides, check_numbers, read_spec_text, validated
from ..safe_yaml import parse_yaml
from ..spec import ExperimentSpec, format_validation_error
from ..template import render_spec_template


def spec_from_text(
    text: str, source: Path | None = None, overrides: list[str] | None = None, variables: dict[str, Any] | None = None
) -> ExperimentSpec:
    where = str(source) if source else None
    try:
        data = parse_yaml(render_spec_template(text, source, variables))
        if not isinstance(data, dict):
            what = "empty" if data is None else f"a YAML {type(data).__name__}"
            raise SpecError("", f"the spec is {what}; a spec is a YAML mapping with name, family, task and layers")
        data = resolve_graph_files(apply_overrides(data, list(overrides or [])), source)
        check_numbers(data)
        return ExperimentSpec.model_validate(data)
    except SpecError as err:
        raise SpecError(err.path, err.message, where) from None
    except ValidationError as err:
        raise SpecError("", format_validation_error(err), where) from None


def load_spec(
    path: str | Path, overrides: list[str] | None = None, variables: dict[str, Any] | None = None
) -> ExperimentSpec:
    path = Path(path)
    return spec_from_text(read_spec_text(path), path, overrides, variables)


def member_spec(
    entry: str | dict[str, Any],
    source: Path | None,
    overrides: Sequence[str],
    path: str,
    where: str | None,
    run_settings: dict[str, Any] | None = None,
) -> ExperimentSpec:
    """A member of a family, multi-task or recursive file: a spec file (relative to the file
    ``source``) or an inline spec, with ``overrides``; ``run_settings`` (the run's generator
    and train) replace the member's own. A problem inside a member file names that file; any
    other names ``path`` in ``where``."""
    if isinstance(entry, str):
        base = source.parent if source else Path.cwd()
        try:
            data = load_spec(base / entry, list(overrides)).model_dump()
        except SpecError as err:
            if err.source:
                raise
            raise SpecError(path, err.message, where) from None
    else:
        data = apply_overrides(copy.deepcopy(entry), list(overrides))
    return validated(ExperimentSpec, {**data, **(run_settings or {})}, where, path)


__all__ = ["load_spec", "member_spec", "spec_from_text"]
