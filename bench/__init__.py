"""Benchmarks for tenantflow (not tests; never gate CI). ``python -m bench.run_all [--quick]``."""
