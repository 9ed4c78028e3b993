"""The applications built on the uhn library: the reproduction harness (`uhn reproduce`) and
the benchmark (`uhn bench`). Only the CLI imports them; uhn_spec and uhn_runtime never do."""
