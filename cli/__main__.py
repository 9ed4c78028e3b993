"""``python -m uhn_cli``: the same as the ``uhn`` command."""

from .main import app

app(prog_name="uhn")
