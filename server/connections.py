"""HTTP connections under limits: at most `max_connections` at once, and a client gets `request_timeout_s`
from the first byte of a request to its last (headers and, for /api, the body).

aiohttp's own keep-alive timeout closes connections that sit idle; what it lacks is a cap and a deadline
for a request that trickles in. Both live here, in a protocol wrapped around aiohttp's request handler
(made by the runner's server, as aiohttp's TCPSite does), served by `GuardedSite`, and in a middleware
that tells the guard when a request arrived whole and when its response has gone out.

At the cap, a new connection first pushes out the connection idle longest (no request being handled:
waiting, or still trickling one in); only when every connection is handling a request is the new one
closed at once. So sockets held open on purpose cannot lock people out; they only churn among themselves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web

log = logging.getLogger(__name__)

WARN_EVERY_S = 60.0


class GuardedProtocol(asyncio.Protocol):
    """One connection: admitted by the guard or closed at once; its request timed while it comes in."""

    def __init__(self, guard: ConnectionGuard, make_handler: Callable[[], asyncio.Protocol]) -> None:
        self._guard = guard
        self._make_handler = make_handler
        self._handler: asyncio.Protocol | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.requests_in_hand = 0  # requests whose handler or response is not finished

    # --- asyncio's calls, handed on to aiohttp's handler ------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if not self._guard.admit(self):
            self.transport.abort()
            return
        self._handler = self._make_handler()
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._handler is None:
            return
        if not self.requests_in_hand and self._deadline is None:  # the first byte of a new request
            self._deadline = asyncio.get_running_loop().call_later(self._guard.request_timeout_s, self._too_slow)
        self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self._handler is None else self._handler.eof_received()

    def pause_writing(self) -> None:
        if self._handler is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._handler is not None:
            self._handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.received()
        self._guard.forget(self)
        if self._handler is not None:
            self._handler.connection_lost(exc)

    # --- the request's progress, told by the middleware -------------------------------------------

    def received(self) -> None:
        """The request arrived whole: its deadline is met."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def request_started(self) -> None:
        self.requests_in_hand += 1
        self._guard.busy(self)

    def request_finished(self) -> None:
        self.requests_in_hand -= 1
        if not self.requests_in_hand:
            self.received()
            self._guard.idle(self)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _too_slow(self) -> None:
        self._deadline = None
        self._guard.note("cut", f"a request took longer than request_timeout_s ({self._guard.request_timeout_s:g} s) "
                                "to arrive")
        if self.transport is not None:
            self.transport.abort()


class ConnectionGuard:
    def __init__(self, max_connections: int, request_timeout_s: float) -> None:
        self.max_connections = max_connections
        self.request_timeout_s = request_timeout_s
        self._open: dict[asyncio.BaseTransport, GuardedProtocol] = {}
        self._idle: dict[GuardedProtocol, None] = {}  # idle ones, longest idle first (dicts keep order)
        self._counts: dict[str, int] = {}
        self._warned_at = 0.0

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def admit(self, connection: GuardedProtocol) -> bool:
        if len(self._open) >= self.max_connections:
            if not self._idle:
                self.note("refused", f"max_connections ({self.max_connections}) are all handling requests")
                return False
            oldest = next(iter(self._idle))
            self.forget(oldest)
            oldest.close()
            self.note("evicted", f"max_connections ({self.max_connections}) reached: the longest idle went")
        assert connection.transport is not None
        self._open[connection.transport] = connection
        self._idle[connection] = None
        return True

    def forget(self, connection: GuardedProtocol) -> None:
        if connection.transport is not None:
            self._open.pop(connection.transport, None)
        self._idle.pop(connection, None)

    def busy(self, connection: GuardedProtocol) -> None:
        self._idle.pop(connection, None)

    def idle(self, connection: GuardedProtocol) -> None:
        if connection.transport in self._open:
            self._idle.pop(connection, None)
            self._idle[connection] = None  # to the end: idle the shortest

    def connection_of(self, request: web.BaseRequest) -> GuardedProtocol | None:
        """None for a request served some other way (aiohttp's test server)."""
        return None if request.transport is None else self._open.get(request.transport)

    def note(self, what: str, why: str) -> None:
        """Count a closed connection; warn at most once a minute, so a flood cannot flood the log."""
        self._counts[what] = self._counts.get(what, 0) + 1
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            counts = ", ".join(f"{n} {w}" for w, n in sorted(self._counts.items()))
            log.warning("closing HTTP connections: %s (so far: %s)", why, counts)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def guard_middleware(guard: ConnectionGuard) -> Any:
    """Tells the guard a request is being handled (its connection is not idle) until its response has gone
    out, and that a request without a body arrived whole. A handler that reads a body calls `received`."""

    @web.middleware
    async def track(request: web.Request, handler: Handler) -> web.StreamResponse:
        connection = guard.connection_of(request)
        if connection is not None:
            connection.request_started()
            if not request.body_exists:
                connection.received()
            # The task that runs this handler also writes the response: done, the connection is idle.
            task = asyncio.current_task()
            assert task is not None
            task.add_done_callback(lambda _task: connection.request_finished())
        return await handler(request)

    return track


def received(guard: ConnectionGuard, request: web.Request) -> None:
    """The request's body has been read: its deadline is met."""
    connection = guard.connection_of(request)
    if connection is not None:
        connection.received()


class GuardedSite(web.BaseSite):
    """aiohttp's TCPSite, serving every connection through the guard."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard,
                 backlog: int = 128) -> None:
        super().__init__(runner, backlog=backlog)
        self._host, self._port, self._guard = host, port, guard
        self.bound_port = port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self.bound_port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: GuardedProtocol(self._guard, server), self._host,
                                                self._port, backlog=self._backlog)
        if self._server.sockets:
            self.bound_port = self._server.sockets[0].getsockname()[1]
