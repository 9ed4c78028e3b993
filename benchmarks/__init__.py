"""Benchmark scripts and the naive baseline generator (see docs/performance.md)."""
