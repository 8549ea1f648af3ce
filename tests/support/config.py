"""A livedmd Config for a test: the defaults, a state dir of the test's own, no environment."""

from __future__ import annotations

from pathlib import Path

from livedm.server import config as config_module
from livedm.server.config import Config


def make_config(state_dir: Path, **flags: object) -> Config:
    """No scheduled jobs unless the test asks: they would run in the middle of it."""
    return config_module.load({"state_dir": str(state_dir), "discover_interval": "0", "refresh_interval": "0",
                               **flags}, environ={})
