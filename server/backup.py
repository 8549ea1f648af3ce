"""Backup and restore of livedm's own database, whichever store it runs on, as NDJSON: one line per
document, `{"collection": ..., "doc": ...}` in MongoDB Extended JSON (types survive the round trip).
Served at GET /admin/backup and POST /admin/restore to admins; the client writes and sends the file."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from bson import json_util

from .errors import CONFLICT, FORBIDDEN, INVALID_REQUEST, UNAUTHENTICATED, ApiError
from .rpc import error_object
from .store import COLLECTIONS, Store

log = logging.getLogger(__name__)

HEADER = {"livedm_backup": 1}
_JSON_OPTIONS = json_util.CANONICAL_JSON_OPTIONS


def backup_lines(store: Store) -> Iterator[bytes]:
    yield (json.dumps(HEADER) + "\n").encode()
    for collection in COLLECTIONS:
        for doc in store.dump(collection):
            yield (json_util.dumps({"collection": collection, "doc": doc}, json_options=_JSON_OPTIONS) + "\n").encode()


def parse_backup(lines: list[bytes]) -> dict[str, list[dict[str, Any]]]:
    """Every line checked before anything is replaced; a bad file changes nothing."""
    if not lines or json.loads(lines[0]) != HEADER:
        raise ApiError(INVALID_REQUEST, "not a livedm backup (its first line is not the backup header)")
    docs: dict[str, list[dict[str, Any]]] = {c: [] for c in COLLECTIONS}
    for number, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        try:
            entry = json_util.loads(line)
        except ValueError as exc:
            raise ApiError(INVALID_REQUEST, f"backup line {number} is not JSON: {exc}") from None
        if not isinstance(entry, dict) or entry.get("collection") not in docs or not isinstance(entry.get("doc"), dict):
            raise ApiError(INVALID_REQUEST, f"backup line {number} is not a livedm document")
        docs[entry["collection"]].append(entry["doc"])
    return docs


def _error(status: int, code: int, message: str) -> web.Response:
    return web.json_response({"error": error_object(code, message)}, status=status)


async def _admin(request: web.Request, user_for: Any) -> web.Response | None:
    try:
        user = await user_for(request)
    except ApiError as exc:
        return _error(401, UNAUTHENTICATED, exc.message)
    if user.get("role") != "admin":
        return _error(403, FORBIDDEN, "backup and restore need an admin")
    return None


async def backup(request: web.Request, store: Store, user_for: Any) -> web.StreamResponse:
    refused = await _admin(request, user_for)
    if refused is not None:
        return refused
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    lines = await asyncio.to_thread(lambda: list(backup_lines(store)))
    for start in range(0, len(lines), 1000):
        await response.write(b"".join(lines[start:start + 1000]))
    await response.write_eof()
    log.info("backup of %d documents sent", len(lines) - 1)
    return response


async def restore(request: web.Request, store: Store, user_for: Any, restored: Any) -> web.Response:
    refused = await _admin(request, user_for)
    if refused is not None:
        return refused
    if request.query.get("confirm") != "yes":
        return _error(400, INVALID_REQUEST, "restore replaces livedm's whole database: add ?confirm=yes")
    if await asyncio.to_thread(store.count_jobs, {"state": "running"}):
        return _error(409, CONFLICT, "jobs are running; restore when the queue is idle (livedm jobs --state running)")
    lines = []
    async for line in request.content:
        lines.append(line)
    try:
        docs = parse_backup(lines)
    except ApiError as exc:
        return _error(400, exc.code, exc.message)
    for collection, items in docs.items():
        await asyncio.to_thread(store.replace_collection, collection, items)
    restored()
    counts = {c: len(items) for c, items in docs.items()}
    log.warning("database restored from a backup: %s", counts)
    return web.json_response({"restored": counts})
