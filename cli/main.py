"""The ``uhn`` command: the typer app of ``app.py`` with every command module registered on it.

Only this module imports the command modules (each registers its commands on ``app`` when
imported), so they never import it back. Add one line per new command module.
"""

from . import (  # noqa: F401  (imported for their registrations)
    bench_commands,
    data_commands,
    import_commands,
    plot_commands,
    reproduce_commands,
    spec_commands,
    train_commands,
    weights_commands,
)
from .app import app

__all__ = ["app"]
