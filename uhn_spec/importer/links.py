"""What an imported module keeps: where each spec tensor lives in the original module
(``KeyLink``), grouped per spec layer (``Imported``), and the error for what cannot be imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import UHNError


class ModuleImportError(UHNError):
    """A module cannot be imported: names the class or module path and the reason."""


@dataclass
class KeyLink:
    """One spec tensor (``spec_name``, local to its layer) and where it lives in the module:
    ``module_key`` whole, or its ``chunk``-th block along dimension 0 (MHA's stacked in_proj)."""

    spec_name: str
    module_key: str
    chunk: int | None = None


@dataclass
class Imported:
    """One spec layer (its YAML mapping) with its key links."""

    layer: dict[str, Any]
    links: list[KeyLink] = field(default_factory=list)

    def key_map(self, prefix: str) -> list[tuple[str, KeyLink]]:
        """(spec state_dict key, link) of this layer's tensors."""
        return [(f"{prefix}.{link.spec_name}", link) for link in self.links]
