"""Benchmarks: each prints livedm's figure beside a baseline measured in the same run, as a ratio."""
