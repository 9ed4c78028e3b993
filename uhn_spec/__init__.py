"""uhn_spec: the spec language, layer registry, descriptors and the compiler to plans.

Names load on first use (PEP 562), so that ``uhn_spec.errors`` and ``uhn_spec.budget`` can be
imported without torch (``uhn --help`` answers at once).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public name -> the submodule that defines it.
_EXPORTS = {
    "ExperimentSpec": "spec",
    "Plan": "plan",
    "PlanError": "errors",
    "SpecError": "errors",
    "TargetModel": "model",
    "TargetPlan": "plan",
    "UHNError": "errors",
    "build_model": "model",
    "compile_spec": "compiler",
    "compile_specs": "compiler",
    "Source": "source",
    "load_plan": "plan",
    "load_source": "source",
    "load_spec": "modes.single",
    "spec_from_text": "modes.single",
}

if TYPE_CHECKING:
    from .compiler import compile_spec, compile_specs
    from .errors import PlanError, SpecError, UHNError
    from .model import TargetModel, build_model
    from .plan import Plan, TargetPlan, load_plan
    from .modes.single import load_spec, spec_from_text
    from .source import Source, load_source
    from .spec import ExperimentSpec


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'uhn_spec' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = sorted(_EXPORTS)
