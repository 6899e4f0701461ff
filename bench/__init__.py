"""Benchmarks run by hand against the test bed (``python -m bench.<name>``)."""
