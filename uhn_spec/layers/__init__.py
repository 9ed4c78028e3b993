"""The layer registry: one module per kind, each registering its spec class here.

Adding a layer kind = one file in this package that defines a ``LayerSpec`` subclass with
``kind: Literal["<name>"]``, a ``layer_type`` id of its own (7 and up; the authors' kinds use
``enums.LayerType``) and ``@register``, plus its property test ``tests/spec/layers/test_<name>.py``
(a meta-test enforces it). Every module of this package is imported below, so nothing else
lists the kinds: the spec's layer union, the docs tables (``tools/doc_tables.py``) and the
error hints all read ``REGISTRY``, which is ordered by ``layer_type`` id.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import LayerSpec

REGISTRY: dict[str, type[LayerSpec]] = {}

# Modules of this package that define no kind.
NOT_KINDS = frozenset({"base"})


def register(cls: type[LayerSpec]) -> type[LayerSpec]:
    kind = cls.model_fields["kind"].default
    if not isinstance(kind, str) or kind in REGISTRY:
        raise ValueError(f"layer kind {kind!r} of {cls.__name__} is missing or registered twice")
    layer_type = int(cls.layer_type)
    clash = [other for other, known in REGISTRY.items() if int(known.layer_type) == layer_type]
    if clash:
        raise ValueError(f"layer kind {kind!r} reuses layer_type {layer_type} of {clash[0]!r}; pick a free id")
    REGISTRY[kind] = cls
    return cls


def _import_every_kind() -> None:
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module.name not in NOT_KINDS and not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")
    ordered = sorted(REGISTRY.items(), key=lambda item: int(item[1].layer_type))
    REGISTRY.clear()
    REGISTRY.update(ordered)
    for cls in REGISTRY.values():
        cls.finish_registry(REGISTRY)


_import_every_kind()

__all__ = ["REGISTRY", "LayerSpec", "register"]
