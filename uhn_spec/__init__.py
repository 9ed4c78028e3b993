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

if TYPE_CHECKING:  # `name as name`: re-exported for type checkers, loaded lazily below
    from .compiler import compile_spec as compile_spec
    from .compiler import compile_specs as compile_specs
    from .errors import PlanError as PlanError
    from .errors import SpecError as SpecError
    from .errors import UHNError as UHNError
    from .model import TargetModel as TargetModel
    from .model import build_model as build_model
    from .modes.single import load_spec as load_spec
    from .modes.single import spec_from_text as spec_from_text
    from .plan import Plan as Plan
    from .plan import TargetPlan as TargetPlan
    from .plan import load_plan as load_plan
    from .source import Source as Source
    from .source import load_source as load_source
    from .spec import ExperimentSpec as ExperimentSpec


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'uhn_spec' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = sorted(_EXPORTS)
