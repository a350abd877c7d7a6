"""Labelled-case generators shared by tests and benchmarks/accuracy.py."""
