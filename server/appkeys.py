"""The application's typed keys: what app.py's startup contexts put in the app, and routes.py reads."""

from __future__ import annotations

from aiohttp import web

from .auth import Authenticator
from .config import Config
from .connections import ConnectionGuard
from .embedded import EmbeddedStore
from .health import HealthChecks
from .observe import Metrics
from .rpc import Dispatcher
from .services import Services
from .store import Store
from .worker import Workers

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", Store)
SERVICES = web.AppKey("services", Services)
AUTH = web.AppKey("auth", Authenticator)
WORKERS = web.AppKey("workers", Workers)
METRICS = web.AppKey("metrics", Metrics)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
EMBEDDED = web.AppKey("embedded", EmbeddedStore)
MONGO_CLIENT = web.AppKey("mongo_client", object)  # a client given by tests (mongomock)
FATAL = web.AppKey("fatal", list)  # why livedmd must exit non-zero, if it must
CONNECTIONS = web.AppKey("connections", ConnectionGuard)
HEALTH = web.AppKey("health", HealthChecks)
