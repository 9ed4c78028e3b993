"""`uhn reproduce`: rerun a table of the paper (``tables.py``) as ordinary `uhn train` runs,
one folder per row x seed (``runs.py``, ``harness.py``), each row's direct lr chosen on a
validation split (``sweep.py``), and write the results as JSON and markdown (``results.py``,
``report.py``)."""

from .harness import Harness
from .results import write_results
from .runs import ReproduceOptions
from .tables import TableError, load_table

__all__ = ["Harness", "ReproduceOptions", "TableError", "load_table", "write_results"]
