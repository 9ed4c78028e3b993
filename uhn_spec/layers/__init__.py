"""The layer registry: one module per kind, each registering its spec class here.

Adding a layer type = one file in this package that defines a ``LayerSpec`` subclass with
``kind: Literal["<name>"]`` decorated with ``@register``, its import below, and one property
test in ``tests/layers/test_<name>.py`` (a meta-test enforces the latter).
"""

from __future__ import annotations

from .base import LayerSpec

REGISTRY: dict[str, type[LayerSpec]] = {}


def register(cls: type[LayerSpec]) -> type[LayerSpec]:
    kind = cls.model_fields["kind"].default
    if not isinstance(kind, str) or kind in REGISTRY:
        raise ValueError(f"layer kind {kind!r} of {cls.__name__} is missing or registered twice")
    REGISTRY[kind] = cls
    return cls


# Import order is the registry order; each import registers its kind.
from . import linear  # noqa: E402,F401
from . import conv2d  # noqa: E402,F401
from . import gcn  # noqa: E402,F401
from . import gat  # noqa: E402,F401
from . import embedding  # noqa: E402,F401
from . import mha  # noqa: E402,F401
from . import kan  # noqa: E402,F401

__all__ = ["REGISTRY", "LayerSpec", "register"]
