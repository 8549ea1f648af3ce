"""Load benchmark: testkit.load's two livedmd processes on one database, 50 clients for 60 s mixing reads,
state changes and small deletions, one daemon stopped by SIGTERM near the end (see testkit/load.py).

`python -m bench load` (BENCH_LOAD_S and BENCH_LOAD_CLIENTS change the length and the clients)."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from testkit.load import run_load


def main() -> None:
    duration_s = float(os.environ.get("BENCH_LOAD_S", "60"))
    clients = int(os.environ.get("BENCH_LOAD_CLIENTS", "50"))
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(run_load(duration_s, clients, Path(tmp)))
    print(f"load: 2 livedmd, {clients} clients, {duration_s:.0f} s: {result['requests']} requests, "
          f"{result['throughput_rps']:.0f} req/s, p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms | "
          f"errors {result['errors']}, lost updates {result['lost_updates']}, doubled {result['doubled_updates']}, "
          f"deletion jobs {result['deletion_jobs']} (not done {result['deletion_jobs_not_done']}) | SIGTERM: exit "
          f"{result['sigterm_exit']} after {result['sigterm_exit_s']:.1f} s, "
          f"in-flight lost {result['in_flight_lost']}, "
          f"restart {'ok' if result['restarted'] else 'FAILED'}")
    print(f"load: outcomes {result['outcomes']}")
    if result["error_samples"]:
        print("load: unexpected errors, e.g.:", *result["error_samples"], sep="\n  ")


if __name__ == "__main__":
    main()
