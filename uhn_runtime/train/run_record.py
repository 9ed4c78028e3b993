"""run.json and summary.json as uhn reads them back: typed records, checked field by field.

A run folder may come from another machine or have been edited, and resume, evaluate,
export, plot and reproduce act on what these files say (the device to train on, the data
root to read, how many micro-shards a step sums). Each field uhn reads back has its type and
range here; anything else in the files is kept as it is (older and newer runs hold other
fields). A field that does not fit is one ``RecordError`` line naming the file, the field and
the value. Nothing here changes what ``uhn train`` writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from uhn_spec.errors import UHNError
from uhn_spec.received import load_received_json

INT64_MAX = 2**63 - 1
# What a path or a line of text in a record may hold; a data root longer than this is no path.
MAX_TEXT = 4096
# The bound of `uhn train --micro-shards` (a micro-shard holds at least one example of a batch).
MAX_MICRO_SHARDS = 4096
# Micro-shards per global batch of `uhn train --exact`. A fixed count, not a function of the
# world size: 1, 2, 4 or 8 processes then add the same per-micro-shard gradients in the same
# order. Here (no torch) so that the command line can name it without importing torch.
DEFAULT_MICRO_SHARDS = 8
# World sizes a run may record (torchrun's WORLD_SIZE); far above any machine uhn runs on.
MAX_WORLD_SIZE = 1 << 20


class RecordError(UHNError):
    """run.json or summary.json is unreadable, or one of its fields does not fit."""


class Record(BaseModel):
    """Strict types (``"3"`` is no number, ``1`` no boolean); unknown fields are kept."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class RunRecord(Record):
    """run.json: how the run was started (``start_run`` and ``RunDir.create`` write it)."""

    mode: Literal["uhn", "direct", "both"]  # one weight source (uhn, direct) or both, uhn first
    seed: int = Field(ge=0, le=INT64_MAX)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] | None = None
    precision_reason: str | None = Field(None, max_length=MAX_TEXT)
    data_root: str | None = Field(None, min_length=1, max_length=MAX_TEXT, pattern=r"^[^\x00]*$")
    tensorboard: bool = False
    shard_generation: bool = False
    micro_shards: int = Field(0, ge=0, le=MAX_MICRO_SHARDS)  # absent: a run from before the exact path (DDP's)
    # Exact data parallel chosen (micro_shards > 0); absent in runs from before it was a choice.
    exact: bool | None = None
    source: str | None = Field(None, max_length=MAX_TEXT)
    overrides: list[str] = Field(default_factory=list, max_length=10_000)
    model: str | None = Field(None, max_length=MAX_TEXT)
    reproduce: str | None = Field(None, max_length=MAX_TEXT)
    cpu: dict[str, Any] | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    git_revision: str | None = Field(None, max_length=MAX_TEXT)
    machine: dict[str, Any] = Field(default_factory=dict)
    world_size: int = Field(1, ge=1, le=MAX_WORLD_SIZE)
    created: str | None = Field(None, max_length=MAX_TEXT)
    task_sampling: dict[str, Any] | None = None
    tasks_per_step: int | None = Field(None, ge=1, le=INT64_MAX)
    gradient_surgery: str | None = Field(None, max_length=MAX_TEXT)

    @model_validator(mode="after")
    def exact_agrees_with_micro_shards(self) -> RunRecord:
        """``exact`` says what ``micro_shards`` does; a resume follows micro_shards, so an
        edit that makes them disagree would train other arithmetic than the file says."""
        if self.exact is not None and self.exact != (self.micro_shards > 0):
            raise ValueError(f"exact: {str(self.exact).lower()} disagrees with micro_shards: {self.micro_shards}")
        return self


class SummaryRecord(Record):
    """summary.json: the fields read back (``RunDir.precision``; reproduce's results)."""

    uhn: float | None = None
    direct: float | None = None
    phase_seconds: dict[Literal["uhn", "direct"], float] = Field(default_factory=dict)
    device: str | None = Field(None, max_length=MAX_TEXT)
    precision: Literal["fp32", "bf16", "fp16"] | None = None
    precision_reason: str | None = Field(None, max_length=MAX_TEXT)
    threads: int | None = Field(None, ge=1, le=INT64_MAX)


R = TypeVar("R", bound=Record)


def load_record(path: Path, model: type[R], fix: str) -> tuple[R, dict[str, Any]]:
    """The file's record checked against ``model``, and the plain dict as written."""
    data = load_received_json(path, "uhn run record")
    if not isinstance(data, dict):
        raise RecordError(f"{path}: holds a JSON {type(data).__name__}, not the run's record (an object); {fix}")
    try:
        return model.model_validate(data), data
    except ValidationError as err:
        raise RecordError(f"{path}: {describe_error(err)}; {fix}") from None


def describe_error(err: ValidationError) -> str:
    """``micro_shards: -3 does not fit: input should be greater than or equal to 0``: the
    first field that does not fit, its value (shortened) and why."""
    first = err.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "(record)"
    if first["type"] == "missing":
        return f"{field}: missing"
    if first["type"] == "value_error" and not first["loc"]:  # a check across fields: its own words
        return str(first.get("ctx", {}).get("error", first["msg"]))
    shown = repr(first.get("input"))
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    if first["type"] == "literal_error":
        choices = str(first.get("ctx", {}).get("expected", "")).replace("'", "").replace(" or ", ", ")
        return f"{field}: {shown} is not one of {choices}"
    message = first["msg"]
    return f"{field}: {shown} does not fit: {message[:1].lower()}{message[1:]}"
