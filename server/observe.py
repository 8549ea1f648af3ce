"""What operators watch: Prometheus metrics (prometheus-client) and one log line per request.

Request counts and latencies are counted as calls happen; job and storage figures are read from the
database when /metrics is scraped (so every livedmd sharing the database reports the same queue).
A scrape is rendered once and shared: concurrent scrapes wait for the same render, and a render is reused
for RENDER_REUSE_S, on a thread of its own, so a flood of /metrics costs one render a second and never
takes a thread from API calls.
"""

from __future__ import annotations

import asyncio
import bisect
import copy
import itertools
import json
import logging
import logging.handlers
import math
import queue
import re
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .domain import DATATYPES
from .jobs import KINDS, STATES
from .store import Store

_TOKEN = re.compile(r"ldm_[A-Za-z0-9_-]{16,}")

RENDER_REUSE_S = 1.0  # a /metrics render is served again for this long after it finished


class StoreCollector(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterable[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("livedm_jobs", "Jobs in the queue by kind and state", labels=["kind", "state"])
        counts = self.store.job_counts(KINDS)
        for kind in KINDS:
            for state in STATES:
                jobs.add_metric([kind, state], counts.get((kind, state), 0))
        yield jobs
        oldest = self.store.oldest_queued_job_time()
        yield GaugeMetricFamily("livedm_queue_oldest_age_seconds", "Age of the oldest queued job (0: none queued)",
                                value=max(0.0, time.time() - oldest) if oldest else 0.0)
        sizes = GaugeMetricFamily("livedm_category_bytes", "Bytes per category over all sessions, as last measured",
                                  labels=["datatype"])
        totals = self.store.bytes_by_datatype()
        for datatype in DATATYPES:
            sizes.add_metric([datatype], totals.get(datatype, 0))
        yield sizes


LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0)


class CallStats(Collector):
    """JSON-RPC calls counted in plain dicts as they happen, on the event loop (no lock, no label lookup: a
    prometheus-client Counter and Histogram cost more than the call they count), turned into Prometheus families
    when /metrics is scraped. The scrape's thread copies the dicts and lists first: each copy is one step of the
    interpreter, so the loop's counting never changes one under it."""

    def __init__(self) -> None:
        self._calls: dict[tuple[str, str], int] = {}
        self._latency: dict[str, list[float]] = {}  # method: [calls per bucket..., calls above the last, seconds]

    def observe(self, method: str, outcome: str, seconds: float) -> None:
        key = (method, outcome)
        self._calls[key] = self._calls.get(key, 0) + 1
        counts = self._latency.get(method)
        if counts is None:
            counts = self._latency[method] = [0.0] * (len(LATENCY_BUCKETS_S) + 2)
        counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1  # the first bucket whose bound >= seconds
        counts[-1] += seconds

    def collect(self) -> Iterable[CounterMetricFamily | HistogramMetricFamily]:
        calls = CounterMetricFamily("livedm_requests", "JSON-RPC calls by method and outcome",
                                    labels=["method", "outcome"])
        for (method, outcome), count in self._calls.copy().items():
            calls.add_metric([method, outcome], count)
        yield calls
        latency = HistogramMetricFamily("livedm_request_seconds", "JSON-RPC call latency by method",
                                        labels=["method"])
        for method, counts in self._latency.copy().items():
            kept = counts.copy()
            cumulative = list(itertools.accumulate(kept[:-1]))
            bounds = [floatToGoString(bound) for bound in (*LATENCY_BUCKETS_S, math.inf)]
            latency.add_metric([method], list(zip(bounds, cumulative, strict=True)), sum_value=kept[-1])
        yield latency


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.call_stats = CallStats()
        self.registry.register(self.call_stats)
        self.observe_call = self.call_stats.observe  # (method, outcome, seconds), once per call
        self.errors = Counter("livedm_errors", "JSON-RPC errors answered, by code", ["code"], registry=self.registry)
        self.renders = Counter("livedm_metrics_renders", "Renders of /metrics (scrapes within "
                               f"{RENDER_REUSE_S:g} s of a render share it)", registry=self.registry)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics")
        self._rendering: asyncio.Future[bytes] | None = None
        self._rendered: tuple[float, bytes] | None = None  # (monotonic time it finished, body)

    def watch_store(self, store: Store) -> None:
        self.registry.register(StoreCollector(store))

    def observe_response(self, response: dict[str, Any] | list[dict[str, Any]] | None) -> list[int]:
        """Count the errors of a reply; their codes."""
        if isinstance(response, dict) and "error" not in response:
            return []
        items = response if isinstance(response, list) else [response] if response else []
        codes = [item["error"]["code"] for item in items if "error" in item]
        for code in codes:
            self.errors.labels(str(code)).inc()
        return codes

    def render(self) -> bytes:
        """Blocking (reads the database): run it in a thread."""
        self.renders.inc()
        return generate_latest(self.registry)

    async def render_shared(self) -> bytes:
        """The last render if it is at most RENDER_REUSE_S old, else the render under way or a new one: at most
        one runs at a time, on the metrics thread. A failed render is not kept: the next scrape tries again."""
        if self._rendered is not None and time.monotonic() - self._rendered[0] < RENDER_REUSE_S:
            return self._rendered[1]
        if self._rendering is None:
            self._rendering = asyncio.ensure_future(self._render_once())
            self._rendering.add_done_callback(_retrieve)  # a failure nobody waits for any more is no warning
        # shielded: a scraper that goes away does not cancel the render the others wait for
        return await asyncio.shield(self._rendering)

    async def _render_once(self) -> bytes:
        try:
            body = await asyncio.get_running_loop().run_in_executor(self._thread, self.render)
            self._rendered = (time.monotonic(), body)
            return body
        finally:
            self._rendering = None


def _retrieve(future: asyncio.Future[bytes]) -> None:
    if not future.cancelled():
        future.exception()


class RedactTokens(logging.Filter):
    """Defence in depth: no API token ever reaches a log, whatever a message carries."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "ldm_" in message:
            record.msg = _TOKEN.sub("ldm_<redacted>", message)
            record.args = None
        if record.exc_text and "ldm_" in record.exc_text:
            record.exc_text = _TOKEN.sub("ldm_<redacted>", record.exc_text)
        return True


def _escapes() -> dict[int, str]:
    """Characters that could end or forge a log line, or not be written at all: C0 and C1 controls, DEL,
    the Unicode line and paragraph separators, lone surrogates."""
    table = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
    table.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})
    table.update({c: f"\\u{c:04x}" for c in (0x2028, 0x2029, *range(0xD800, 0xE000))})
    return table


_ESCAPES = _escapes()


def escape_controls(text: str) -> str:
    """One log record stays one line, whatever a title, a user name or a method name holds."""
    return text if text.isprintable() else text.translate(_ESCAPES)


def _traceback(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    if record.exc_text:
        return record.exc_text
    return formatter.formatException(record.exc_info) if record.exc_info else ""


class PlainFormatter(logging.Formatter):
    """The record's line escaped; a traceback, which spans lines by nature, is indented under it, so no
    line of it can pass for a record of its own."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        lines = [escape_controls(self.formatMessage(record))]
        for text in (_traceback(self, record), record.stack_info):
            lines.extend("    " + escape_controls(line) for line in (text or "").splitlines())
        return "\n".join(lines)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
                 "level": record.levelname.lower(), "logger": record.name,
                 "message": escape_controls(record.getMessage())}
        traceback = _traceback(self, record)
        if traceback:
            entry["exception"] = traceback
        return json.dumps(entry)


class DeferredQueueHandler(logging.handlers.QueueHandler):
    """QueueHandler formats in the caller's thread; livedm's log arguments are plain values, so the
    formatting can wait for the listener's thread."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        exc_info = record.exc_info
        if exc_info and exc_info[0] is not None:  # tracebacks hold frames: render them now, apart from the message
            record = copy.copy(record)
            record.exc_text = _TRACEBACKS.formatException(exc_info)
            record.msg, record.args, record.exc_info = record.getMessage(), None, None
        return record


_TRACEBACKS = logging.Formatter()


def configure_logging(level: str, log_format: str) -> logging.handlers.QueueListener:
    """Records are formatted and written by a background thread (the event loop only queues them: a
    line per request must not cost the requests). Stop the returned listener at exit to flush."""
    handler = logging.StreamHandler()
    handler.addFilter(RedactTokens())
    handler.setFormatter(JsonFormatter() if log_format == "json"
                         else PlainFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # The logging HOWTO's "Optimization": skip what livedm's format never shows (caller frame, thread
    # and process names); together they cost more than writing the line.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, handler, respect_handler_level=True)
    root = logging.getLogger()
    root.handlers[:] = [DeferredQueueHandler(records)]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    listener.start()
    return listener
