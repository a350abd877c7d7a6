"""Benchmarks (speed, accuracy) and labelled scenario generators."""
