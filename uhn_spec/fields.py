"""What every spec section is built from: the strict pydantic base and the name rule.

Kept apart from ``spec`` so that the dataset table (``tasks``) and every mode's section can
use them without importing the whole spec.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict

# A spec's name names its default run folder (runs/<name>/...) and files: one path component
# of portable characters, never "." or "..", hidden, or longer than any file system takes.
MAX_NAME_LENGTH = 100
NAME_CHARACTERS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
NAME_RULE = "letters, digits, '_', '.' and '-', starting with a letter or digit"


def name_field(
    max_length: int = MAX_NAME_LENGTH, why: str = "it names the run folder", letter_first: bool = False
) -> Any:
    """The type of a ``name`` field: a str of at most ``max_length`` characters of NAME_RULE
    (shorter where uhn appends to it, as a family's members ``<name>_0000``; ``letter_first``
    where the name goes through YAML again, where ``1_0000`` would read as a number)."""
    rule = NAME_RULE.replace("letter or digit", "letter") if letter_first else NAME_RULE

    def check(name: str) -> str:
        if NAME_CHARACTERS.fullmatch(name) and len(name) <= max_length and (name[0].isalpha() or not letter_first):
            return name
        shown = repr(name) if len(name) <= 40 else f"{name[:40]!r}... ({len(name)} characters)"
        raise ValueError(f"must be 1 to {max_length} {rule}; {why} (got {shown})")

    return Annotated[str, AfterValidator(check)]


SpecName = name_field()


class StrictModel(BaseModel):
    # allow_inf_nan: "inf" or "nan" given as strings are refused too (check_numbers sees floats).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
