"""The HTTP routes: the JSON-RPC endpoint, health, metrics, the page, and an admin's backup and restore."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from . import __version__
from .appkeys import AUTH, CONFIG, CONNECTIONS, DISPATCHER, EMBEDDED, HEALTH, METRICS, SERVICES, STORE, WORKERS
from .auth import token_from_headers
from .backup import backup_lines
from .connections import received
from .errors import CONFLICT, FORBIDDEN, INTERNAL_ERROR, INVALID_REQUEST, PARSE_ERROR, UNAUTHENTICATED, ApiError
from .restore import BATCH_DOCS, restore
from .rpc import READ_METHODS, CallContext, error_object, error_response
from .store import StoreUnavailable

log = logging.getLogger(__name__)
request_log = logging.getLogger("livedm.requests")

WEB_DIR = Path(__file__).parent / "web"
UPLOAD_CHUNK_BYTES = 1 << 20
UPLOAD_IDLE_S = 120.0

# The page's own files only: no inline script or style, no other origin, never inside a frame.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Frame-Options": "DENY",
                    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

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
    log_request(request, ctx, codes, seconds=time.perf_counter() - started)
    if response is None:  # only notifications
        return web.Response(status=204)
    return web.json_response(response)


SLOW_REQUEST_S = 1.0


def log_request(request: web.Request, ctx: CallContext, error_codes: list[int], *, seconds: float) -> None:
    """A line per request at info, but for reads that went well and fast: those at debug (they are counted in
    /metrics; a line each cost more than the read)."""
    routine = not error_codes and seconds < SLOW_REQUEST_S and ctx.calls and all(
        outcome == "ok" and name in READ_METHODS for name, outcome in ctx.calls)
    level = logging.DEBUG if routine else logging.INFO
    if not request_log.isEnabledFor(level):
        return
    who = (ctx.user or {}).get("name", "-")
    methods = ",".join(sorted({name for name, _ in ctx.calls})) or "-"
    errors = f" errors={','.join(map(str, error_codes))}" if error_codes else ""
    request_log.log(level, "%s user=%s calls=%d methods=%s%s %.1fms", request.remote, who, len(ctx.calls), methods,
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


async def metrics(request: web.Request) -> web.Response:
    # shared by concurrent scrapes and reused for a second (observe.py): a flood costs one render a second
    body = await request.app[METRICS].render_shared()
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every response, the page's and its static files' included."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


def _error(status: int, code: int, message: str) -> web.Response:
    return web.json_response({"error": error_object(code, message)}, status=status)


async def _admin(request: web.Request) -> web.Response | None:
    try:
        user = await _caller(request)
    except ApiError as exc:
        return _error(401, UNAUTHENTICATED, exc.message)
    if user.get("token_scope") is not None:
        return _error(403, FORBIDDEN, "a scoped token (a hook run's) may not back up or restore; use an admin's token")
    if user.get("role") != "admin":
        return _error(403, FORBIDDEN, "backup and restore need an admin")
    return None


async def backup_file(request: web.Request) -> web.StreamResponse:
    refused = await _admin(request)
    if refused is not None:
        return refused
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    lines = backup_lines(request.app[STORE])
    sent = 0
    while batch := await asyncio.to_thread(lambda: list(itertools.islice(lines, BATCH_DOCS))):
        await response.write(b"".join(batch))
        sent += len(batch)
    await response.write_eof()
    log.info("backup of %d documents sent", sent - 2)
    return response


async def restore_file(request: web.Request) -> web.Response:
    refused = await _admin(request)
    if refused is not None:
        return refused
    if request.query.get("confirm") != "yes":
        return _error(400, INVALID_REQUEST, "restore replaces livedm's whole database: add ?confirm=yes")
    received(request.app[CONNECTIONS], request)  # an admin's upload takes its time: no request deadline from here
    try:
        summary = await restore(request.app[STORE], request.app[CONFIG], _body_chunks(request),
                                content_length=request.content_length,
                                unverified_ok=request.query.get("unverified") == "yes")
    except ApiError as exc:
        log.warning("restore refused: %s", exc.message)
        return _error(exc.data.get("http_status") or (409 if exc.code == CONFLICT else 400), exc.code, exc.message)
    except StoreUnavailable as exc:
        log.error("restore failed: %s", exc)
        return _error(503, INTERNAL_ERROR, f"{exc}; if the restore had begun to switch collections it completes when "
                                           "livedmd starts again, otherwise nothing was restored")
    request.app[AUTH].forget()  # cached users and tokens are the old database's
    log.warning("database restored from a backup: %s", summary)
    return web.json_response(summary)




async def _body_chunks(request: web.Request) -> AsyncIterator[bytes]:
    """The request body as it comes; an upload has no overall deadline (a big backup takes its time), but one
    that stops sending is given up."""
    while True:
        try:
            chunk = await asyncio.wait_for(request.content.read(UPLOAD_CHUNK_BYTES), UPLOAD_IDLE_S)
        except TimeoutError:
            raise ApiError(INVALID_REQUEST, f"the upload stalled (no data for {UPLOAD_IDLE_S:g} s); nothing was "
                                            "restored") from None
        if not chunk:
            return
        yield chunk


def add_routes(app: web.Application) -> None:
    app.on_response_prepare.append(security_headers)
    app.router.add_get("/", greeting)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/admin/backup", backup_file)
    app.router.add_post("/admin/restore", restore_file)
    app.router.add_post("/api", api)
    app.router.add_get("/ui", ui_page)
    app.router.add_get("/ui/", ui_page)
    app.router.add_static("/ui/static", WEB_DIR, append_version=False)
