"""uhn_cli: the ``uhn`` command line (installed from the folder ``cli/``)."""
