"""Hand-run benchmarks (`make bench`); never part of the test suite."""
