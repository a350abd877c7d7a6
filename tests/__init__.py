"""diffdiag test suite."""
