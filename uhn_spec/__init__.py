"""uhn_spec: the spec language, layer registry, descriptors and the compiler to plans."""

from .compiler import compile_spec, compile_specs
from .errors import PlanError, SpecError, UHNError
from .model import TargetModel, build_model
from .plan import Plan, TargetPlan, load_plan
from .spec import ExperimentSpec, load_spec, spec_from_text

__all__ = [
    "ExperimentSpec",
    "Plan",
    "PlanError",
    "SpecError",
    "TargetModel",
    "TargetPlan",
    "UHNError",
    "build_model",
    "compile_spec",
    "compile_specs",
    "load_plan",
    "load_spec",
    "spec_from_text",
]
