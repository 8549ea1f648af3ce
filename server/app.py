"""The aiohttp application: routes, and one startup/cleanup context per resource."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pymongo
from aiohttp import web

from . import __version__, backup
from .auth import Authenticator, ensure_admin, token_from_headers
from .config import Config
from .embedded import EmbeddedStore
from .errors import INVALID_REQUEST, PARSE_ERROR, ApiError
from .hooks import ensure_hook_user
from .methods import METHODS
from .observe import Metrics
from .rpc import CallContext, Dispatcher, error_response
from .services import Services
from .store import Store, StoreUnavailable
from .worker import Workers

log = logging.getLogger(__name__)
request_log = logging.getLogger("livedm.requests")

WEB_DIR = Path(__file__).parent / "web"

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", Store)
SERVICES = web.AppKey("services", Services)
AUTH = web.AppKey("auth", Authenticator)
WORKERS = web.AppKey("workers", Workers)
METRICS = web.AppKey("metrics", Metrics)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
EMBEDDED = web.AppKey("embedded", EmbeddedStore)
MONGO_CLIENT = web.AppKey("mongo_client", pymongo.MongoClient)


async def greeting(request: web.Request) -> web.Response:
    return web.Response(text=f"livedm {__version__}: live session data management. "
                             "JSON-RPC at POST /api, health at /healthz.\n")


async def ui_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def healthz(request: web.Request) -> web.Response:
    app = request.app
    started = time.perf_counter()
    database: dict[str, Any] = {"ok": True}
    try:
        await asyncio.to_thread(app[STORE].ping)
        database["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    except StoreUnavailable as exc:
        database = {"ok": False, "error": str(exc)}
    embedded = app.get(EMBEDDED)
    embedded_state = None if embedded is None else {
        "ok": embedded.alive(), "pid": embedded.process.pid if embedded.process else None}
    workers = app.get(WORKERS)
    workers_state = None if workers is None else {
        "ok": workers.alive() == workers.count, "configured": workers.count, "alive": workers.alive(),
        "running_jobs": sorted(workers.running)}
    healthy = database["ok"] and all(part is None or part["ok"] for part in (embedded_state, workers_state))
    body = {"status": "ok" if healthy else "failing", "version": __version__,
            "database": database, "embedded_store": embedded_state, "workers": workers_state}
    return web.json_response(body, status=200 if healthy else 503)


async def api(request: web.Request) -> web.Response:
    app = request.app
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = app[CONFIG].max_request_bytes
        return web.json_response(error_response(
            INVALID_REQUEST, f"the request body is larger than {limit} bytes (max_request_bytes); "
                             "send large file lists in several calls"))
    try:
        body = raw.decode("utf-8")
    except UnicodeDecodeError:
        return web.json_response(error_response(PARSE_ERROR, "the request body is not UTF-8 text"))
    ctx = CallContext(services=app[SERVICES], user=None)
    token = token_from_headers(request.headers)
    authenticator = app[AUTH]
    try:
        ctx.user = authenticator.cached_user(token) or await asyncio.to_thread(authenticator.user_for, token)
    except ApiError as exc:
        ctx.auth_error = exc
    started = time.perf_counter()
    response = await app[DISPATCHER].dispatch(body, ctx)
    codes = app[METRICS].observe_response(response)
    log_request(request, ctx, codes, time.perf_counter() - started)
    if response is None:  # only notifications
        return web.Response(status=204)
    return web.json_response(response)


def log_request(request: web.Request, ctx: CallContext, error_codes: list[int], seconds: float) -> None:
    who = (ctx.user or {}).get("name", "-")
    methods = ",".join(sorted({name for name, _ in ctx.calls})) or "-"
    errors = f" errors={','.join(map(str, error_codes))}" if error_codes else ""
    request_log.info("%s user=%s calls=%d methods=%s%s %.1fms", request.remote, who, len(ctx.calls), methods,
                     errors, seconds * 1000)


async def _caller(request: web.Request) -> dict[str, Any]:
    authenticator = request.app[AUTH]
    token = token_from_headers(request.headers)
    return authenticator.cached_user(token) or await asyncio.to_thread(authenticator.user_for, token)


async def backup_route(request: web.Request) -> web.StreamResponse:
    return await backup.backup(request, request.app[STORE], _caller)


async def restore_route(request: web.Request) -> web.Response:
    return await backup.restore(request, request.app[STORE], _caller, request.app[AUTH].forget)


async def metrics(request: web.Request) -> web.Response:
    body = await asyncio.to_thread(request.app[METRICS].render)
    return web.Response(body=body, content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


def _prepare_state_dir(config: Config) -> None:
    Path(config.state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    _prepare_state_dir(config)
    client = app.get(MONGO_CLIENT)  # given by tests (mongomock); otherwise ours to open and close
    owns_client = client is None
    if client is None:
        uri = config.mongo_uri
        if not uri:
            embedded = EmbeddedStore(config.state_dir)
            uri = embedded.start()  # blocking, once at start; must run on the main thread
            app[EMBEDDED] = embedded
        client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=10_000)
    store = Store(client, config.mongo_db)
    await asyncio.to_thread(store.ensure_indexes)
    token = await asyncio.to_thread(ensure_admin, store, config.admin_token_path)
    await asyncio.to_thread(ensure_hook_user, store)
    if token is None:
        log.info("admin token: %s (written at first start)", config.admin_token_path)
    app[STORE] = store
    app[METRICS].watch_store(store)
    app[AUTH] = Authenticator(store, config.auth_cache_s)
    app[SERVICES] = Services.build(store, config, app[AUTH])
    yield
    if owns_client:
        client.close()
    if EMBEDDED in app:
        app[EMBEDDED].stop()


async def workers_ctx(app: web.Application) -> AsyncIterator[None]:
    """Background jobs; on shutdown they finish within drain_s or go back to the queue."""
    config = app[CONFIG]
    workers = app[SERVICES].workers(config.workers)
    app[WORKERS] = workers
    workers.start()
    yield
    await workers.stop(config.drain_s)


def create_app(config: Config, mongo_client: pymongo.MongoClient | None = None) -> web.Application:
    app = web.Application(client_max_size=config.max_request_bytes)
    app[CONFIG] = config
    if mongo_client is not None:
        app[MONGO_CLIENT] = mongo_client
    app[METRICS] = Metrics()
    app[DISPATCHER] = Dispatcher(METHODS, app[METRICS].observe_call)
    app.cleanup_ctx.append(database_ctx)
    app.cleanup_ctx.append(workers_ctx)
    app.router.add_get("/", greeting)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/admin/backup", backup_route)
    app.router.add_post("/admin/restore", restore_route)
    app.router.add_post("/api", api)
    app.router.add_get("/ui", ui_page)
    app.router.add_get("/ui/", ui_page)
    app.router.add_static("/ui/static", WEB_DIR, append_version=False)
    return app

