"""The aiohttp application: routes, and one startup/cleanup context per resource."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

from aiohttp import web

from . import __version__, backup
from .auth import Authenticator, ensure_admin, token_from_headers
from .config import Config
from .connections import ConnectionGuard, guard_middleware, received
from .embedded import EmbeddedStore
from .errors import INTERNAL_ERROR, INVALID_REQUEST, PARSE_ERROR, ApiError
from .health import HealthChecks
from .hooks import ensure_hook_user
from .methods import METHODS
from .observe import Metrics
from .rpc import CallContext, Dispatcher, error_response
from .services import Services
from .statelock import StateDirLock
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
MONGO_CLIENT = web.AppKey("mongo_client", object)  # a client given by tests (mongomock)
FATAL = web.AppKey("fatal", list)  # why livedmd must exit non-zero, if it must
CONNECTIONS = web.AppKey("connections", ConnectionGuard)
HEALTH = web.AppKey("health", HealthChecks)

# The page's own files only: no inline script or style, no other origin, never inside a frame.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Frame-Options": "DENY",
                    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

SELECTION_TIMEOUT_S = 3.0  # a call while the database is away fails within this, as -32603
STORE_WATCH_S = 1.0
STORE_STABLE_S = 60.0


async def greeting(request: web.Request) -> web.Response:
    return web.Response(text=f"livedm {__version__}: live session data management. "
                             "JSON-RPC at POST /api, health at /healthz.\n")


async def ui_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def healthz(request: web.Request) -> web.Response:
    app = request.app
    checks = app[HEALTH]
    database, state_dir = await asyncio.gather(checks.database(app[STORE]), checks.state_dir_space())
    embedded = app.get(EMBEDDED)
    embedded_state: dict[str, Any] | None = None if embedded is None else {
        "ok": embedded.alive(), "pid": embedded.process.pid if embedded.process else None}
    if embedded_state is not None and not embedded_state["ok"]:
        embedded_state["error"] = "the embedded store is not running (livedmd restarts it; see its log)"
    workers = app.get(WORKERS)
    workers_state = None if workers is None else {
        "ok": workers.alive() == workers.count, "configured": workers.count, "alive": workers.alive(),
        "running_jobs": sorted(workers.running)}
    if workers_state is not None and not workers_state["ok"]:
        workers_state["error"] = f"{workers_state['alive']} of {workers_state['configured']} workers are alive"
    parts = {"database": database, "embedded_store": embedded_state, "workers": workers_state,
             "state_dir": state_dir}
    reasons = [f"{name}: {part.get('error', 'not ok')}" for name, part in parts.items()
               if part is not None and not part["ok"]]
    body = {"status": "failing" if reasons else "ok", "version": __version__, **parts,
            "connections": app[CONNECTIONS].open_connections, "reasons": reasons}
    return web.json_response(body, status=503 if reasons else 200)


async def api(request: web.Request) -> web.Response:
    app = request.app
    try:
        raw = await request.read()  # within request_timeout_s of the request's first byte (connections.py)
    except web.HTTPRequestEntityTooLarge:
        limit = app[CONFIG].max_request_bytes
        return web.json_response(error_response(
            INVALID_REQUEST, f"the request body is larger than {limit} bytes (max_request_bytes); "
                             "send large file lists in several calls"))
    received(app[CONNECTIONS], request)
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
    except StoreUnavailable as exc:
        ctx.auth_error = ApiError(INTERNAL_ERROR, f"{exc}; the token cannot be checked now: try again in a few "
                                  "seconds (/healthz shows the state)")
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
    user = authenticator.cached_user(token)
    if user is None:
        user = await asyncio.to_thread(authenticator.user_for, token)
    if user.get("token_scope") is not None:  # a hook run's token is never an admin's
        return {**user, "role": "scoped token"}
    return user


async def backup_route(request: web.Request) -> web.StreamResponse:
    return await backup.backup(request, request.app[STORE], _caller)


async def restore_route(request: web.Request) -> web.Response:
    # an upload streamed by an admin has no request deadline, from the moment the admin is known
    return await backup.restore(request, request.app[STORE], _caller, request.app[AUTH].forget, request.app[CONFIG],
                                lambda: received(request.app[CONNECTIONS], request))


async def metrics(request: web.Request) -> web.Response:
    # shared by concurrent scrapes and reused for a second (observe.py): a flood costs one render a second
    body = await request.app[METRICS].render_shared()
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every response, the page's and its static files' included."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


async def health_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    app[HEALTH] = HealthChecks(config.state_dir, config.state_min_free_bytes)
    yield
    app[HEALTH].close()


def prepare_state_dir(config: Config) -> None:
    """The state dir holds the admin token and the embedded store's socket: ours alone, mode 0700, and only
    under directories no other user may change. Else that user could rename the state dir away and put a
    store of their own in its place, which livedmd would trust at its next pool connection. As OpenSSH's
    StrictModes: every directory above it (symlinks resolved, the links' own directories too) must belong to
    root or livedmd's user and be writable by no one else, unless it has the sticky bit (like /tmp)."""
    path = Path(os.path.abspath(config.state_dir))
    me = os.geteuid()
    consequence = "could put a database of their own in the state dir's place and become livedm's admin"

    def why_unsafe(directory: Path) -> str | None:
        st = os.stat(directory)
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid not in (0, me):
            return (f"the state dir {path} lies under {directory}, which belongs to uid {st.st_uid}, neither root "
                    f"nor livedmd's user (uid {me}): that user {consequence}. Give {directory} to root "
                    f"(chown root {directory}) or give livedmd a state dir elsewhere (--state-dir)")
        if mode & 0o022 and not mode & stat.S_ISVTX:
            return (f"the state dir {path} lies under {directory}, which users other than its owner may write "
                    f"(mode {mode:o}): any of them {consequence}. Make it writable by its owner only (chmod go-w "
                    f"{directory}) or sticky like /tmp (chmod +t {directory}), or give livedmd a state dir under "
                    "directories only root or its own user may change (--state-dir)")
        return None

    def refuse_unsafe_ancestors() -> None:
        checked: set[Path] = set()
        for prefix in (*reversed(path.parents), path):
            if not os.path.lexists(prefix):
                break
            link = os.lstat(prefix)
            if stat.S_ISLNK(link.st_mode) and link.st_uid not in (0, me):
                raise RuntimeError(f"the state dir {path} is reached through the symlink {prefix}, which belongs "
                                   f"to uid {link.st_uid}, neither root nor livedmd's user (uid {me}): that user "
                                   f"{consequence}. Name the real directory (--state-dir)")
            real = Path(os.path.realpath(prefix))
            for directory in (*real.parents, *([real] if prefix != path else [])):  # the state dir: ours to fix
                if directory not in checked:
                    checked.add(directory)
                    why = why_unsafe(directory)
                    if why is not None:
                        raise RuntimeError(why)

    refuse_unsafe_ancestors()  # before anything is made there
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    refuse_unsafe_ancestors()  # the directories just made too (a umask of 0 makes them 0777)
    st = os.stat(path)
    if st.st_uid != me:
        raise RuntimeError(f"the state dir {path} belongs to uid {st.st_uid}, not to livedmd's user "
                           f"(uid {me}); give livedmd a state dir of its own (--state-dir)")
    if st.st_mode & 0o077:
        log.warning("the state dir %s was open to other users (mode %o); now 0700", path, st.st_mode & 0o777)
        os.chmod(path, 0o700)


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    prepare_state_dir(config)
    lock = StateDirLock(config.state_dir).acquire()  # before the embedded store: it is the state dir's
    await asyncio.to_thread(backup.remove_stale_uploads, config.state_dir)  # a dead restore's, ours now
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
        pinned = await asyncio.to_thread(app[SERVICES].sessions.pin_projects)
        if pinned:
            log.info("pinned the directories of %d project(s) made by an earlier livedm", pinned)
        if EMBEDDED in app:
            supervisor = asyncio.create_task(supervise_embedded(app), name="embedded-store-supervisor")
        yield
    finally:
        if supervisor is not None:
            supervisor.cancel()
        if SERVICES in app:
            app[SERVICES].disk.close()
        if STORE in app and MONGO_CLIENT not in app:
            app[STORE].close()
        if EMBEDDED in app:
            app[EMBEDDED].stop()
        lock.release()


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
    yield
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
    app.on_response_prepare.append(security_headers)
    app.cleanup_ctx.append(health_ctx)
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

