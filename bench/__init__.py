"""Benchmarks run by hand against the test bed: ``python -m bench`` (see docs/benchmarks.md).

The older single-component benchmarks run as ``python -m bench.<name>``.
"""
