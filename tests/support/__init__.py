"""Helpers shared by the tests (and only by them): conftests and test modules import from here, never
from one another (tests/unit/test_layout.py). What bench/ uses too lives in testkit/."""
