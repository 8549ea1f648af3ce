"""wrk as the load generator: one POST body, a token, and a check of every reply (bench/rpc_post.lua)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).with_name("rpc_post.lua")


@dataclass(frozen=True)
class WrkRun:
    requests: int
    duration_s: float
    good: int  # 200 replies carrying the expected result
    bad: int  # any other reply
    socket_errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("the throughput benchmark needs wrk as its load generator: `sudo apt-get install wrk` "
                         "(Debian's package; `make bench` installs it when run as root)")
    return found


def wrk_threads() -> int:
    """Half the machine: the other half serves (on 2 cores, 1 thread drives a bare aiohttp handler at ~30k
    req/s, far beyond what one Python process answers)."""
    return max(1, (os.cpu_count() or 2) // 2)


def run_wrk(url: str, *, token: str, body: str, expected_result: int, duration_s: float,
            connections: int) -> WrkRun:
    argv = [wrk_binary(), f"-t{min(wrk_threads(), connections)}", f"-c{connections}", f"-d{duration_s:g}s",
            "-s", str(SCRIPT), url, "--", token, body, str(expected_result)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60, check=True)
    line = next((line for line in done.stdout.splitlines() if line.startswith("WRK_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{done.stdout}\n{done.stderr}")
    figures = json.loads(line.removeprefix("WRK_RESULT "))
    return WrkRun(requests=figures["requests"], duration_s=figures["duration_us"] / 1e6, good=figures["good"],
                  bad=figures["bad"], socket_errors=figures["socket_errors"])
