"""Benchmarks: each measures side by side against a named baseline and writes JSON."""
