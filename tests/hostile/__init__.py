"""Hostile and damaged inputs, each run through the real CLI (issue 12; docs/CONTRACT.md §1)."""
