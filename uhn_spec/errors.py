"""Errors that reach users: each names the spec path, file or value and how to fix it."""

from __future__ import annotations


class UHNError(Exception):
    """Base class for every error the CLI reports as one line (exit code 2)."""


class SpecError(UHNError):
    """A spec is invalid. ``path`` is the YAML path, e.g. ``model.layers[3].in_features``."""

    def __init__(self, path: str, message: str, source: str | None = None):
        self.path = path
        self.message = message
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{path}: {message}" if path else f"{where}{message}")


class PlanError(UHNError):
    """A plan file is missing, corrupt, truncated or of another format version."""
