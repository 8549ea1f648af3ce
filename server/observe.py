"""What operators watch: Prometheus metrics (prometheus-client) and one log line per request.

Request counts and latencies are counted as calls happen; job and storage figures are read from the
database when /metrics is scraped (so every livedmd sharing the database reports the same queue).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import re
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .domain import DATATYPES
from .jobs import KINDS, STATES
from .store import Store

_TOKEN = re.compile(r"ldm_[A-Za-z0-9_-]{16,}")


class StoreCollector(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterable[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("livedm_jobs", "Jobs in the queue by kind and state", labels=["kind", "state"])
        counts = self.store.job_counts()
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


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.calls = Counter("livedm_requests", "JSON-RPC calls by method and outcome", ["method", "outcome"],
                             registry=self.registry)
        self.latency = Histogram("livedm_request_seconds", "JSON-RPC call latency by method", ["method"],
                                 registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60))
        self.errors = Counter("livedm_errors", "JSON-RPC errors answered, by code", ["code"], registry=self.registry)

    def watch_store(self, store: Store) -> None:
        self.registry.register(StoreCollector(store))

    def observe_call(self, method: str, outcome: str, seconds: float) -> None:
        self.calls.labels(method, outcome).inc()
        self.latency.labels(method).observe(seconds)

    def observe_response(self, response: dict[str, Any] | list[dict[str, Any]] | None) -> list[int]:
        """Count the errors of a reply; their codes."""
        items = response if isinstance(response, list) else [response] if response else []
        codes = [item["error"]["code"] for item in items if "error" in item]
        for code in codes:
            self.errors.labels(str(code)).inc()
        return codes

    def render(self) -> bytes:
        """Blocking (reads the database): run it in a thread."""
        return generate_latest(self.registry)


class RedactTokens(logging.Filter):
    """Defence in depth: no API token ever reaches a log, whatever a message carries."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "ldm_" in message:
            record.msg = _TOKEN.sub("ldm_<redacted>", message)
            record.args = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
                 "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class DeferredQueueHandler(logging.handlers.QueueHandler):
    """QueueHandler formats in the caller's thread; livedm's log arguments are plain values, so the
    formatting can wait for the listener's thread."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if record.exc_info:  # tracebacks hold frames: render them now
            return super().prepare(record)
        return record


def configure_logging(level: str, log_format: str) -> logging.handlers.QueueListener:
    """Records are formatted and written by a background thread (the event loop only queues them: a
    line per request must not cost the requests). Stop the returned listener at exit to flush."""
    handler = logging.StreamHandler()
    handler.addFilter(RedactTokens())
    handler.setFormatter(JsonFormatter() if log_format == "json"
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # The logging HOWTO's "Optimization": skip what livedm's format never shows (caller frame, thread
    # and process names); together they cost more than writing the line.
    logging._srcfile = None  # type: ignore[attr-defined]
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
