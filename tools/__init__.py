"""Developer scripts of the uhn checkout (not installed): ``python tools/NAME.py``."""
