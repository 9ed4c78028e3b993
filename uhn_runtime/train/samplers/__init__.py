"""The samplers of the modes, by ``Plan.mode``: a new mode is one sampler file here, one
line in ``SAMPLERS`` and its spec module in ``uhn_spec.modes``."""

from __future__ import annotations

from uhn_spec.plan import Plan

from ..run_tables import is_multi_model
from .base import Sampler, Work
from .family import FamilySampler
from .multitask import MultitaskSampler, step_settings
from .single import SingleSampler

SAMPLERS: dict[str, type[Sampler]] = {
    "single": SingleSampler,
    "recursive": SingleSampler,  # the generated generators are the weight source; the leaf is the target
    "family": FamilySampler,
    "multitask": MultitaskSampler,
}


def sampler_class(plan: Plan) -> type[Sampler]:
    """The sampler of ``plan``'s mode; a family of one member trains and reports as one model."""
    chosen = SAMPLERS[plan.mode]
    return SingleSampler if chosen is FamilySampler and not is_multi_model(plan) else chosen


__all__ = [
    "SAMPLERS",
    "FamilySampler",
    "MultitaskSampler",
    "Sampler",
    "SingleSampler",
    "Work",
    "sampler_class",
    "step_settings",
]
