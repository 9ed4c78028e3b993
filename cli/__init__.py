"""uhn_cli: the ``uhn`` command line (installed from the folder ``cli/``).

Runs before any command module imports torch: OpenMP reads its wait policy once, when torch
loads it, so the shared-machine default is set here (uhn_runtime/cpu_policy.py), and MKL's strict
reproducibility, which MKL reads as it initialises.
"""

from uhn_runtime.cpu_policy import set_openmp_env, set_reproducible_env

set_openmp_env()
set_reproducible_env()
