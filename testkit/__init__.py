"""What the tests and the benchmarks both use: real livedmd processes, session trees on disk, the
load generator, the browser to drive. Imports nothing from tests/ or bench/ (tests/unit/test_layout.py)."""
