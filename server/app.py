"""The aiohttp application: routes, and one startup/cleanup context per resource."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

from aiohttp import web

from . import restore
from .appkeys import (
    AUTH,
    CONFIG,
    CONNECTIONS,
    DISPATCHER,
    EMBEDDED,
    FATAL,
    HEALTH,
    METRICS,
    MONGO_CLIENT,
    SERVICES,
    STORE,
    WORKERS,
)
from .auth import Authenticator, ensure_admin
from .config import Config
from .connections import ConnectionGuard, guard_middleware
from .embedded import EmbeddedStore
from .health import HealthChecks
from .hooks import ensure_hook_user
from .methods import METHODS
from .observe import Metrics
from .routes import add_routes
from .rpc import Dispatcher
from .scheduler import Scheduler
from .services import Services
from .statedir import StateDirLock, prepare_state_dir
from .store import Store

log = logging.getLogger(__name__)

SELECTION_TIMEOUT_S = 3.0  # a call while the database is away fails within this, as -32603
STORE_WATCH_S = 1.0
STORE_STABLE_S = 60.0


async def health_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    app[HEALTH] = HealthChecks(config.state_dir, config.state_min_free_bytes)
    yield
    app[HEALTH].close()


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    prepare_state_dir(config)
    lock = StateDirLock(config.state_dir).acquire()  # before the embedded store: it is the state dir's
    await asyncio.to_thread(restore.remove_stale_uploads, config.state_dir)  # a dead restore's, ours now
    supervisor: asyncio.Task[None] | None = None
    try:
        client = app.get(MONGO_CLIENT)  # given by tests (mongomock); otherwise ours to open and close
        if client is None:
            uri = config.mongo_uri
            if not uri:
                embedded = EmbeddedStore(config.state_dir)
                app[EMBEDDED] = embedded
                embedded.spawn()  # on the main thread: the store dies with the thread that started it
                await asyncio.to_thread(embedded.wait_ready)
                uri = embedded.uri
            store = Store.connect(uri, config.mongo_db, selection_timeout_s=SELECTION_TIMEOUT_S)
        else:
            store = Store(cast(Any, client), config.mongo_db)
        finished = await asyncio.to_thread(store.finish_interrupted_restore, time.time(),
                                           0.0 if EMBEDDED in app else Store.RESTORE_STALE_S)
        if finished:
            log.warning("restore: %s", finished)
        await asyncio.to_thread(store.ensure_indexes)
        token = await asyncio.to_thread(ensure_admin, store, config.admin_token_path)
        await asyncio.to_thread(ensure_hook_user, store)
        if token is None:
            log.info("admin token: %s (written at first start)", config.admin_token_path)
        app[STORE] = store
        app[METRICS].watch_store(store)
        app[AUTH] = Authenticator(store, config.auth_cache_s)
        app[SERVICES] = Services.build(store, config, app[AUTH])
        threading.Thread(target=warm_overview, args=(app[SERVICES],), name="overview-warm", daemon=True).start()
        if EMBEDDED in app:  # the store is this process's alone, and no measure of this process has begun: a
            # category calculating now was left so by a livedmd that died mid-measure (with a shared MongoDB
            # another may be measuring, and the maintenance waits CALCULATING_STALE_S)
            repaired = await asyncio.to_thread(app[SERVICES].sessions.repair_calculating, 0.0)
            if repaired:
                log.warning("%d categor%s left calculating by a livedmd that stopped mid-measure went back to "
                            "their status", repaired, "y" if repaired == 1 else "ies")
        pinned = await asyncio.to_thread(app[SERVICES].sessions.pin_projects)
        if pinned:
            log.info("pinned the directories of %d project(s) made by an earlier livedm", pinned)
        if EMBEDDED in app:
            supervisor = asyncio.create_task(supervise_embedded(app), name="embedded-store-supervisor")
        yield
    finally:
        if supervisor is not None:
            supervisor.cancel()
        if SERVICES in app:  # off the loop: it waits up to CLOSE_WRITES_S for walk states being written
            await asyncio.to_thread(app[SERVICES].close)
        if STORE in app and MONGO_CLIENT not in app:
            app[STORE].close()
        if EMBEDDED in app:
            app[EMBEDDED].stop()
        lock.release()


def warm_overview(services: Services) -> None:
    """The overview's index read at start, beside serving (50,000 sessions take seconds on the embedded
    store), so that the first page does not wait for it. A daemon thread: stopping never waits for it."""
    try:
        services.overview.index.warm()
    except Exception as exc:  # the store went away meanwhile (stopping): the first page reads it instead
        log.info("the overview's index was not read at start (%s: %s)", type(exc).__name__, exc)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


async def supervise_embedded(app: web.Application) -> None:
    """Restart the embedded store when it dies; after embedded_max_restarts restarts that did not last
    STORE_STABLE_S, give up: livedmd stops with an error and systemd restarts the whole unit."""
    embedded, config = app[EMBEDDED], app[CONFIG]
    failures = 0
    last_restart = 0.0
    home = _identity(embedded.directory)
    while True:
        await asyncio.sleep(STORE_WATCH_S)
        if _identity(embedded.directory) != home:  # someone swapped the directory the socket is reached by
            message = f"the embedded store's directory {embedded.directory} was moved or replaced"
            log.critical("%s; stopping livedmd (check who can write above the state dir)", message)
            app[FATAL].append(message)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if embedded.alive():
            if failures and time.monotonic() - last_restart > STORE_STABLE_S:
                failures = 0
            continue
        failures += 1
        code = embedded.process.returncode if embedded.process else None
        if failures > config.embedded_max_restarts:
            message = (f"the embedded store keeps dying (exit status {code}; {failures - 1} restarts); "
                       f"see {embedded.log_path}")
            log.critical("%s; stopping livedmd", message)
            app[FATAL].append(message)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        log.error("the embedded store died (exit status %s); restarting it (%d of %d)", code, failures,
                  config.embedded_max_restarts)
        last_restart = time.monotonic()
        try:
            embedded.respawn()
            await asyncio.to_thread(embedded.wait_ready)
        except RuntimeError as exc:
            log.error("%s", exc)


async def workers_ctx(app: web.Application) -> AsyncIterator[None]:
    """Background jobs; on shutdown they finish within drain_s or go back to the queue."""
    config = app[CONFIG]
    workers = app[SERVICES].workers(config.workers)
    app[WORKERS] = workers
    workers.start()
    schedule: asyncio.Task[None] | None = None
    if config.workers:  # a daemon that runs jobs also queues the scheduled ones (single: never doubled)
        services = app[SERVICES]
        schedule = asyncio.create_task(Scheduler(app[STORE], services.queue, config).run(), name="schedule")
    yield
    if schedule is not None:
        schedule.cancel()
    await workers.stop(config.drain_s)


def create_app(config: Config, mongo_client: Any = None) -> web.Application:
    guard = ConnectionGuard(config.max_connections, config.request_timeout_s)
    app = web.Application(client_max_size=config.max_request_bytes, middlewares=[guard_middleware(guard)])
    app[CONFIG] = config
    app[CONNECTIONS] = guard
    app[FATAL] = []
    if mongo_client is not None:
        app[MONGO_CLIENT] = mongo_client
    app[METRICS] = Metrics()
    app[DISPATCHER] = Dispatcher(METHODS, app[METRICS].observe_call, max_batch_calls=config.max_batch_calls)
    app.cleanup_ctx.append(health_ctx)
    app.cleanup_ctx.append(database_ctx)
    app.cleanup_ctx.append(workers_ctx)
    add_routes(app)
    return app

