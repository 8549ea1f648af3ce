"""HTTP connections under limits: at most `max_connections` at once, a client gets `request_timeout_s`
from the first byte of a request to its last (headers and, for /api, the body), and a response the client
stops taking is cut after `request_timeout_s` without progress.

aiohttp's own keep-alive timeout closes connections that sit idle; what it lacks is a cap, a deadline
for a request that trickles in and one for a response nobody reads. They live here, in a protocol wrapped
around aiohttp's request handler (made by the runner's server, as aiohttp's TCPSite does), served by
`GuardedSite`, and in a middleware that tells the guard when a request arrived whole and when its
response has gone out.

A connection is idle (waiting for a request, or not a byte sent yet), arriving (a request's first byte is
in, its last is not: headers or body still trickling in) or busy (its request is handled, its response
written). At the cap, a new connection pushes out, in this order: the connection idle longest, if idle
for GRACE_S; the slowest (fewest bytes a second) of the requests arriving longest; the connection idle
longest, however briefly. So a client that sends its request at once is not pushed out before it could,
while slow requests are around; only when every connection is busy is the new one closed at once. Sockets
held open on purpose, silent or trickling, cannot lock people out; they mostly churn among themselves.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web

log = logging.getLogger(__name__)

WARN_EVERY_S = 60.0
GRACE_S = 0.25  # a connection this new, or idle this briefly, is pushed out only when nothing else can go
SLOWEST_OF = 16  # at the cap, the slowest of this many requests arriving the longest is pushed out


def _now() -> float:
    """Compared only with itself, never with the loop's timers: monotonic, without get_running_loop() (on Python
    3.11 each call of it costs a getpid() syscall)."""
    return time.monotonic()


class GuardedProtocol(asyncio.Protocol):
    """One connection: admitted by the guard or closed at once; its request timed while it comes in."""

    def __init__(self, guard: ConnectionGuard, make_handler: Callable[[], asyncio.Protocol]) -> None:
        self._guard = guard
        self._make_handler = make_handler
        self._handler: asyncio.Protocol | None = None
        self._deadline: asyncio.TimerHandle | None = None  # set while a request arrives
        self._stalled: asyncio.TimerHandle | None = None  # set while the client takes none of a response
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.requests_in_hand = 0  # requests whose handler or response is not finished
        self.arrival_started_at = 0.0  # _now() at the arriving request's first byte
        self.arrived_bytes = 0  # of the arriving request, so far

    def arrival_rate(self, now: float) -> float:
        """Bytes a second of the request still arriving (a request just begun counts as GRACE_S old)."""
        return self.arrived_bytes / max(now - self.arrival_started_at, GRACE_S)

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
            self._begin_arrival()
        if self._deadline is not None:
            self.arrived_bytes += len(data)
        self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self._handler is None else self._handler.eof_received()

    def pause_writing(self) -> None:
        """The send buffer is full: the client must take some of it within request_timeout_s."""
        if self._stalled is None:
            self._stalled = self.loop.call_later(self._guard.request_timeout_s, self._not_taken)
        if self._handler is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._end_stall()
        if self._handler is not None:
            self._handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_stall()
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
            self._guard.arrived(self)

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

    def _begin_arrival(self) -> None:
        self._deadline = self.loop.call_later(self._guard.request_timeout_s, self._too_slow)
        self.arrival_started_at, self.arrived_bytes = _now(), 0
        self._guard.arriving(self)

    def _end_stall(self) -> None:
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None

    def _too_slow(self) -> None:
        self._deadline = None
        self._guard.arrived(self)
        self._guard.note("cut", f"a request took longer than request_timeout_s ({self._guard.request_timeout_s:g} s) "
                                "to arrive")
        if self.transport is not None:
            self.transport.abort()

    def _not_taken(self) -> None:
        self._stalled = None
        self._guard.note("cut", f"a client took none of its response for request_timeout_s "
                                f"({self._guard.request_timeout_s:g} s)")
        if self.transport is not None:
            self.transport.abort()


class ConnectionGuard:
    def __init__(self, max_connections: int, request_timeout_s: float) -> None:
        self.max_connections = max_connections
        self.request_timeout_s = request_timeout_s
        self._open: dict[asyncio.BaseTransport, GuardedProtocol] = {}
        self._idle: dict[GuardedProtocol, float] = {}  # waiting for a request (since), the longest idle first
        self._arriving: dict[GuardedProtocol, None] = {}  # receiving a request, the earliest begun first
        self._counts: dict[str, int] = {}
        self._warned_at = 0.0

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def admit(self, connection: GuardedProtocol) -> bool:
        if len(self._open) >= self.max_connections and not self._make_room():
            self.note("refused", f"max_connections ({self.max_connections}) are all handling requests")
            return False
        assert connection.transport is not None
        self._open[connection.transport] = connection
        self._idle[connection] = _now()
        return True

    def _make_room(self) -> bool:
        """Push out the connection idle longest if it has been idle GRACE_S, else the slowest of the requests
        arriving longest, else the connection idle longest however briefly; none, when every one is busy.

        A new connection (idle, not a byte sent yet) is thus pushed out only after slow requests: it gets the
        time to send its own. It is not spared outright: a client that reconnects as fast as it is pushed
        out would then fill the cap with connections in their grace, leaving others nothing to push out."""
        now = _now()
        longest_idle = next(iter(self._idle), None)
        if longest_idle is not None and now - self._idle[longest_idle] >= GRACE_S:
            return self._push_out(longest_idle, "the longest idle went")
        slowest = self._slowest_arriving(now)
        if slowest is not None:
            return self._push_out(slowest, "the slowest request still arriving went")
        if longest_idle is not None:
            return self._push_out(longest_idle, "the longest idle went")
        return False

    def _push_out(self, victim: GuardedProtocol, why: str) -> bool:
        self.forget(victim)
        victim.close()
        self.note("evicted", f"max_connections ({self.max_connections}) reached: {why}")
        return True

    def _slowest_arriving(self, now: float) -> GuardedProtocol | None:
        """The slowest of the SLOWEST_OF requests arriving longest (a bounded look: this runs per connection)."""
        longest = itertools.islice(self._arriving, SLOWEST_OF)  # the earliest begun first
        return min(longest, key=lambda c: c.arrival_rate(now), default=None)

    def forget(self, connection: GuardedProtocol) -> None:
        if connection.transport is not None:
            self._open.pop(connection.transport, None)
        self._idle.pop(connection, None)
        self._arriving.pop(connection, None)

    def arriving(self, connection: GuardedProtocol) -> None:
        if connection.transport in self._open:
            self._idle.pop(connection, None)
            self._arriving[connection] = None

    def arrived(self, connection: GuardedProtocol) -> None:
        self._arriving.pop(connection, None)

    def busy(self, connection: GuardedProtocol) -> None:
        self._idle.pop(connection, None)

    def idle(self, connection: GuardedProtocol) -> None:
        if connection.transport in self._open:
            self._idle.pop(connection, None)
            self._idle[connection] = _now()  # to the end: idle the shortest

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
            task = asyncio.current_task(connection.loop)
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

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, guard: ConnectionGuard,
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
