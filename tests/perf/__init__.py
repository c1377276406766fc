"""Benchmarks: run as scripts (`scripts/bench.sh`), never collected by pytest."""
