"""Calls counted in-process (observe.CallStats) are exported exactly as prometheus-client's own Counter and
Histogram would export them: the same names, labels, buckets, counts and sums."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from livedm.server.observe import LATENCY_BUCKETS_S, Metrics

CALLS = [("get_datatype_size", "ok", s) for s in (0.0001, 0.001, 0.0010001, 0.003, 0.2, 1.0, 59.9, 60.0, 61.0, 900.0)]
CALLS += [("get_datatype_size", "-32602", 0.002), ("whoami", "ok", 0.0), ("create_project", "-32002", 0.01)]


def _samples(registry: CollectorRegistry) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    return {(s.name, tuple(sorted(s.labels.items())), round(s.value, 9)) for family in registry.collect()
            for s in family.samples if s.name.startswith(("livedm_requests", "livedm_request_seconds"))
            and not s.name.endswith("_created")}


def test_call_stats_export_what_prometheus_clients_metrics_would() -> None:
    reference = CollectorRegistry()
    calls = Counter("livedm_requests", "calls", ["method", "outcome"], registry=reference)
    latency = Histogram("livedm_request_seconds", "latency", ["method"], buckets=LATENCY_BUCKETS_S,
                        registry=reference)
    metrics = Metrics()
    for method, outcome, seconds in CALLS:
        calls.labels(method, outcome).inc()
        latency.labels(method).observe(seconds)
        metrics.observe_call(method, outcome, seconds)
    ours = _samples(metrics.registry)
    assert ours == _samples(reference)
    assert ("livedm_request_seconds_count", (("method", "get_datatype_size"),), 11.0) in ours
    assert b'livedm_requests_total{method="whoami",outcome="ok"} 1.0' in metrics.render()
