"""The tables `uhn reproduce` runs: their schema and loading. A table lists rows; a row is a
setting (the spec that trains it, per budget the --set overrides and seeds, the paper's
figures, the grid its direct lr is chosen from) or a note (why it cannot run here). The
built-in tables (table1, table2, demo) are YAML files shipped with the package, read exactly
as a user's table file is."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from uhn_spec.errors import UHNError
from uhn_spec.metrics import MetricName
from uhn_spec.received import ReceivedFileError, load_received_yaml
from uhn_spec.spec import StrictModel

Budget = Literal["cpu", "paper"]
BUDGETS: tuple[Budget, ...] = ("cpu", "paper")


class TableError(UHNError):
    """A table definition, a row name or a run folder does not fit what `uhn reproduce` asks."""


class BudgetPlan(StrictModel):
    """How a row trains at one budget."""

    set: list[str] = Field(default_factory=list, description="--set overrides on the row's spec")
    changes: str = Field(description="one line: what these overrides change against the spec")
    seeds: list[int] = Field(min_length=1)
    estimate_seconds: float | None = Field(None, gt=0, description="one seed, UHN + direct, idle 2-core CPU")


class PaperFigures(StrictModel):
    uhn: float | None = None
    direct: float | None = None


class TableRow(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    dataset: str
    model: str
    metric: MetricName
    spec: str | None = Field(None, description="the spec file, relative to the table's spec root")
    note: str | None = Field(None, description="why the row has no spec (e.g. no data here)")
    budgets: dict[Budget, BudgetPlan] = Field(default_factory=dict)
    paper: PaperFigures = Field(default_factory=PaperFigures)
    direct_lr_grid: list[float] = Field(default_factory=list, description="direct lrs chosen from on val")
    direct_lr_rule: str = "the spec's train.direct_lr (else train.lr)"

    @model_validator(mode="after")
    def _spec_or_note(self) -> TableRow:
        if (self.spec is None) == (self.note is None):
            raise ValueError("give a spec (a row that trains) or a note (why it cannot), exactly one")
        if self.spec is not None and set(self.budgets) != set(BUDGETS):
            raise ValueError(f"budgets: a row with a spec gives both budgets, {' and '.join(BUDGETS)}")
        return self

    @property
    def runnable(self) -> bool:
        return self.spec is not None


class Table(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    title: str
    rows: list[TableRow] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_rows(self) -> Table:
        names = [row.name for row in self.rows]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"rows: {', '.join(twice)} named more than once; row names are folder names")
        return self

    def row(self, name: str) -> TableRow:
        for row in self.rows:
            if row.name == name:
                return row
        raise TableError(f"--rows: {name!r} is not a row of {self.name}; rows: {', '.join(r.name for r in self.rows)}")


def _validation_message(err: ValidationError) -> str:
    first = err.errors()[0]
    path = ".".join(str(part) for part in first["loc"] if not str(part).startswith("function-"))
    return f"{path}: {first['msg']}" if path else first["msg"]


def table_from_data(data: Any, source: str) -> Table:
    try:
        return Table.model_validate(data)
    except ValidationError as err:
        raise TableError(f"{source}: {_validation_message(err)}") from None


BUILTIN_FOLDER = Path(__file__).resolve().parent / "tables"
BUILTIN_TABLES = ("table1", "table2", "demo")  # BUILTIN_FOLDER/<name>.yaml


def load_table(name_or_path: str) -> tuple[Table, Path]:
    """A built-in table by name, or a YAML table file; with the folder its spec paths are
    relative to: a file's own folder, the current folder for a built-in table (whose paths
    name a uhn checkout's specs/; run from one, or pass --specs-root)."""
    builtin = name_or_path in BUILTIN_TABLES
    path = BUILTIN_FOLDER / f"{name_or_path}.yaml" if builtin else Path(name_or_path)
    if not path.is_file():
        known = ", ".join(BUILTIN_TABLES)
        raise TableError(f"{name_or_path}: neither a built-in table ({known}) nor a table file")
    try:
        data = load_received_yaml(path, "table file")
    except ReceivedFileError as err:
        raise TableError(f"{err}; a table is a YAML mapping") from None
    if builtin:
        return table_from_data(data, name_or_path), Path.cwd()
    return table_from_data(data, str(path)), path.resolve().parent
