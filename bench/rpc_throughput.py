"""`get_datatype_size` requests/s at 16 connections, wrk as the load generator: a real livedmd on the embedded
store vs a bare aiohttp handler (bench/bare_server.py) in the same run, rounds interleaved (ours, bare, ours,
bare, ...) so that a noisy moment on a shared machine hits both alike; medians.

Every reply is checked (bench/rpc_post.lua): a livedmd reply that is not a 200 carrying the measured size
fails the benchmark, so a fast error path cannot pass for throughput.

BENCH_ROUNDS, BENCH_ROUND_S and BENCH_LOG_LEVEL (livedmd's log_level, default info) change the run."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.bare_server import RESULT as BARE_RESULT
from bench.wrk_load import WrkRun, run_wrk, wrk_binary, wrk_threads
from livedm.server.embedded import free_port
from testkit.daemon import Daemon
from testkit.sessiontree import build_session_tree

CONNECTIONS = 16
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
ROUND_S = float(os.environ.get("BENCH_ROUND_S", "5"))
WARMUP_S = 2.0
TARGET_RATIO = 0.5
BODY = json.dumps({"jsonrpc": "2.0", "method": "get_datatype_size",
                   "params": {"project_uid": "P1", "session_uid": "S1", "datatype": "micrographs"}, "id": 1})


def wait_http(url: str) -> None:
    for _ in range(100):
        try:
            urllib.request.urlopen(urllib.request.Request(url, data=b"{}"), timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def checked(run: WrkRun, who: str) -> WrkRun:
    if run.bad or run.socket_errors or run.good != run.requests:
        raise SystemExit(f"throughput: {who} answered {run.bad} of {run.requests} requests with something else "
                         f"than a 200 carrying the expected result ({run.socket_errors} socket errors): "
                         "the figures would not be throughput")
    return run


def main() -> None:
    wrk_binary()  # fails with what to install before anything starts
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_session_tree(root / "proj", exposures=3)
        daemon = Daemon(root / "state", env={"LIVEDM_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "info")}).start()
        port = free_port()
        bare_server = subprocess.Popen([sys.executable, "-m", "bench.bare_server", str(port)])
        try:
            daemon.call("create_project", ["bench", str(root / "proj")])
            daemon.call("create_live_session", ["P1", "bench"])
            daemon.call("update_session_datatype_sizes", ["P1", "S1"])
            size = daemon.call("get_datatype_size", ["P1", "S1", "micrographs"])
            assert isinstance(size, int) and size > 0, size
            bare_url = f"http://127.0.0.1:{port}/api"
            wait_http(bare_url)

            def ours(duration_s: float) -> WrkRun:
                return checked(run_wrk(daemon.url + "/api", token=daemon.token, body=BODY, expected_result=size,
                                       duration_s=duration_s, connections=CONNECTIONS), "livedmd")

            def bare(duration_s: float) -> WrkRun:
                return checked(run_wrk(bare_url, token="none", body=BODY, expected_result=BARE_RESULT,
                                       duration_s=duration_s, connections=CONNECTIONS), "the bare handler")

            ours(WARMUP_S)
            bare(WARMUP_S)
            rounds = [(ours(ROUND_S).rps, bare(ROUND_S).rps) for _ in range(ROUNDS)]
        finally:
            bare_server.terminate()
            bare_server.wait()
            daemon.stop()
    ours_rps = statistics.median(r[0] for r in rounds)
    bare_rps = statistics.median(r[1] for r in rounds)
    ratio = ours_rps / bare_rps
    print(f"throughput: livedm get_datatype_size {ours_rps:.0f} req/s | bare aiohttp handler {bare_rps:.0f} req/s "
          f"= {ratio:.2f}x (target >= {TARGET_RATIO}); medians of {ROUNDS} interleaved {ROUND_S:g} s rounds of wrk, "
          f"{CONNECTIONS} connections, {wrk_threads()} thread(s); per round: "
          f"{', '.join(f'{o:.0f}/{b:.0f}' for o, b in rounds)}")


if __name__ == "__main__":
    main()
