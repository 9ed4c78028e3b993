"""The generator, its feature kernels, and the functional targets whose weights it writes."""
