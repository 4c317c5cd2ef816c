"""Harness shared by the tests and the benchmarks: code that drives the pipeline from outside and is
not part of it (the library under src/vlqc holds only what the workflow runs)."""
