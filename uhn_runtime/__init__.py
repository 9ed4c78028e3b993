"""uhn_runtime: the generator, functional targets, data, training, export and benchmarks."""
