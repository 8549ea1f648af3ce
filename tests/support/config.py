"""A livedmd Config for a test: the defaults, a state dir of the test's own, no environment."""

from __future__ import annotations

from pathlib import Path

from livedm.server import config as config_module
from livedm.server.auth import Authenticator
from livedm.server.config import Config
from livedm.server.services import Services
from livedm.server.sessions import Sessions
from livedm.server.store import Store


def make_config(state_dir: Path, **flags: object) -> Config:
    """No scheduled jobs unless the test asks: they would run in the middle of it."""
    return config_module.load({"state_dir": str(state_dir), "discover_interval": "0", "refresh_interval": "0",
                               **flags}, environ={})


def service_on(store: Store, config: Config) -> Sessions:
    """The sessions service as livedmd builds it; its owner closes `.walks` (the change feed's inotify
    instance: a user has 128)."""
    return Services.build(store, config, Authenticator(store, config.auth_cache_s)).sessions
