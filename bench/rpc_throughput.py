"""`get_datatype_size` requests/s over HTTP at 16 concurrent connections: a real livedmd on the embedded
store vs a bare aiohttp handler returning a constant JSON-RPC result, same load generator, same run."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

from livedm.server.embedded import free_port
from testkit.daemon import Daemon
from testkit.sessiontree import build_session_tree

CONCURRENCY = 16
BENCH_ENV = {"LIVEDM_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "info")}
DURATION_S = 4.0
ROUNDS = 5
BODY = json.dumps({"jsonrpc": "2.0", "method": "get_datatype_size",
                   "params": {"project_uid": "P1", "session_uid": "S1", "datatype": "micrographs"}, "id": 1})


async def load(url: str, token: str) -> tuple[float, int]:
    """Requests/s and errors, 16 connections for DURATION_S (after a short warm-up)."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        done = errors = 0
        stop_at = 0.0

        async def worker() -> None:
            nonlocal done, errors
            while time.perf_counter() < stop_at:
                async with session.post(url, data=BODY, headers=headers) as response:
                    reply = await response.json()
                    if "result" not in reply:
                        errors += 1
                done += 1

        stop_at = time.perf_counter() + 0.5
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        done = errors = 0
        started = time.perf_counter()
        stop_at = started + DURATION_S
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return done / (time.perf_counter() - started), errors


def wait_http(url: str) -> None:
    for _ in range(100):
        try:
            urllib.request.urlopen(urllib.request.Request(url, data=b"{}"), timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_session_tree(root / "proj", exposures=3)
        daemon = Daemon(root / "state", env=BENCH_ENV).start()
        port = free_port()
        bare = subprocess.Popen([sys.executable, "-m", "bench.bare_server", str(port)])
        try:
            daemon.call("create_project", ["bench", str(root / "proj")])
            daemon.call("create_live_session", ["P1", "bench"])
            daemon.call("update_session_datatype_sizes", ["P1", "S1"])
            wait_http(f"http://127.0.0.1:{port}/api")
            runs = []  # interleaved, so a noisy moment on this shared machine hits both sides alike
            for _ in range(ROUNDS):
                baseline_rps, _ = asyncio.run(load(f"http://127.0.0.1:{port}/api", "none"))
                ours_rps, errors = asyncio.run(load(daemon.url + "/api", daemon.token))
                runs.append((ours_rps / baseline_rps, ours_rps, baseline_rps, errors))
        finally:
            bare.terminate()
            bare.wait()
            daemon.stop()
    ratio, ours, baseline, _ = statistics.median_low(runs)
    errors = sum(run[3] for run in runs)
    print(f"throughput: bare aiohttp handler {baseline:.0f} req/s | livedm get_datatype_size {ours:.0f} req/s "
          f"({errors} errors) = {ratio:.2f}x (median of {ROUNDS} interleaved rounds: "
          f"{', '.join(f'{r[0]:.2f}' for r in runs)}; target >= 0.4), {CONCURRENCY} connections")


if __name__ == "__main__":
    main()
