"""Load generation: 2 livedmd processes on one database (the embedded store), clients mixing reads,
state changes and small deletions, loopback only. Near the end one daemon gets SIGTERM while the load
goes on: what it had in flight must be answered, its jobs finished or released, and it must exit 0 in
time; its clients move to the other daemon (as behind a proxy). Afterwards the audit log is checked
for lost or doubled updates and the stopped daemon is started again.

Run as a benchmark by `python -m bench load`, briefly as a test by tests/e2e/test_load.py."""

from __future__ import annotations

import asyncio
import random
import signal
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pymongo

from livedm.server.embedded import EmbeddedStore
from livedm.server.store import Store
from testkit.daemon import Daemon, start_together
from testkit.sessiontree import build_session_tree

SESSIONS = 12
SMALL_FILES = 300  # per session, the metadata files small deletions take one at a time
MARKS = ("active", "archiving", "archived", "deleted")
RACE_S = 0.2  # requests sent this close to the SIGTERM may meet a connection being closed
EXPECTED_CODES = {-32003}  # conflict: a category busy deleting, or changed by another client meanwhile


@dataclass
class Report:
    latencies_s: list[float] = field(default_factory=list)
    outcomes: Counter = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    in_flight_lost: int = 0
    state_changes_ok: int = 0
    deletion_jobs: list[str] = field(default_factory=list)
    sigterm_exit: int | None = None
    sigterm_exit_s: float | None = None


def prepare(root: Path) -> tuple[Path, dict[str, list[str]]]:
    project = root / "proj"
    small: dict[str, list[str]] = {}
    for i in range(1, SESSIONS + 1):
        tree = build_session_tree(project, f"S{i}", exposures=2)
        folder = tree.session_path / "ctfestimated" / "small"
        folder.mkdir(parents=True)
        small[f"S{i}"] = []
        for j in range(SMALL_FILES):
            (folder / f"f{j:04d}.dat").write_bytes(b"d" * 10)
            small[f"S{i}"].append(str(folder / f"f{j:04d}.dat"))
    return project, small


async def client(index: int, urls: list[str], token: str, deadline: float, small: dict[str, list[str]],
                 report: Report, stopped_at: dict[str, float]) -> None:
    rng = random.Random(index)
    headers = {"Authorization": f"Bearer {token}"}
    home = index % len(urls)
    async with aiohttp.ClientSession(headers=headers) as http:
        while time.monotonic() < deadline:
            url = urls[home]
            session_uid = f"S{rng.randint(1, SESSIONS)}"
            roll = rng.random()
            params: Any
            if roll < 0.70:
                method, params = "get_datatype_size", ["P1", session_uid, rng.choice(["raw", "metadata", "particles"])]
            elif roll < 0.95:
                method, params = "change_session_data_management_state", [
                    "P1", session_uid, rng.choice(["micrographs", "particles", "raw"]), rng.choice(MARKS)]
            else:
                files = small[session_uid]
                if not files:
                    continue
                method, params = "delete_live_datatype", {"project_uid": "P1", "session_uid": session_uid,
                                                          "datatype": "metadata",
                                                          "filepaths_to_delete": [files.pop()]}
            started = time.monotonic()
            try:
                async with http.post(url + "/api", json={"jsonrpc": "2.0", "method": method, "params": params,
                                                         "id": 1}) as response:
                    reply = await response.json()
            except (TimeoutError, aiohttp.ClientError) as exc:
                if url in stopped_at and started >= stopped_at[url]:
                    report.outcomes["refused after stop"] += 1
                    home = (home + 1) % len(urls)  # as a proxy would: to the daemon still up
                    continue
                if url in stopped_at and started >= stopped_at[url] - RACE_S and \
                        isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
                    # sent on a keep-alive connection the stopping server was closing as idle: it never
                    # reached a handler (a proxy retries these on another upstream)
                    report.outcomes["cut at stop"] += 1
                    home = (home + 1) % len(urls)
                    continue
                if url in stopped_at:
                    report.in_flight_lost += 1
                when = f" (sent {stopped_at[url] - started:.3f} s before SIGTERM)" if url in stopped_at else ""
                report.unexpected.append(f"{method}: {type(exc).__name__} {exc}{when}")
                continue
            report.latencies_s.append(time.monotonic() - started)
            if "error" in reply:
                code = reply["error"]["code"]
                report.outcomes[f"error {code}"] += 1
                if code not in EXPECTED_CODES:
                    report.unexpected.append(f"{method} {params}: {reply['error']['message']}")
                continue
            report.outcomes[method] += 1
            if method == "change_session_data_management_state":
                report.state_changes_ok += 1
            elif method == "delete_live_datatype":
                report.deletion_jobs.append(reply["result"])


def chain_breaks(entries: list[dict[str, Any]]) -> int:
    """State changes per category must chain from 'active' to the final status (see the integration
    test): a category with two winners from one state has an unbalanced node."""
    balance: dict[tuple[str, str], Counter] = {}
    for entry in entries:
        counter = balance.setdefault((entry["session_uid"], entry["datatype"]), Counter())
        counter[entry["old_status"]] += 1
        counter[entry["status"]] -= 1
    breaks = 0
    for counter in balance.values():
        counter["active"] -= 1  # where every chain starts
        positives = sum(v for v in counter.values() if v > 0)
        breaks += positives  # a balanced trail leaves exactly one -1 (its end) and nothing positive
    return breaks


async def run_load(duration_s: float, clients: int, root: Path) -> dict[str, Any]:
    project, small = prepare(root)
    store = EmbeddedStore(root / "db")
    uri = store.start()
    env = {"LIVEDM_MONGO_URI": uri, "LIVEDM_DRAIN_S": "10"}
    first, second = Daemon(root / "a", env=env), Daemon(root / "b", env=env)
    start_together(first, second)  # one database: they share the admin's token file
    report = Report()
    try:
        first.call("create_project", ["load", str(project)])
        for i in range(1, SESSIONS + 1):
            first.call("create_live_session", ["P1", f"s{i}"])
            first.call("mark_session_completed", ["P1", f"S{i}"])
        stopped_at: dict[str, float] = {}
        deadline = time.monotonic() + duration_s
        load = asyncio.gather(*(client(i, [first.url, second.url], first.token, deadline, small, report, stopped_at)
                                for i in range(clients)))

        async def stop_second() -> None:
            await asyncio.sleep(duration_s * 0.75)
            assert second.process is not None
            stopped_at[second.url] = time.monotonic()
            second.process.send_signal(signal.SIGTERM)
            report.sigterm_exit = await asyncio.to_thread(second.process.wait, 90)
            report.sigterm_exit_s = time.monotonic() - stopped_at[second.url]
            second.process = None

        started = time.monotonic()
        await asyncio.gather(load, stop_second())
        elapsed_s = time.monotonic() - started
        # let the queue drain (jobs released by the stopped daemon are resumed by the other)
        for _ in range(600):
            if not first.call("list_jobs", {"state": "queued"}) and not first.call("list_jobs", {"state": "running"}):
                break
            await asyncio.sleep(0.1)
        reader = Store(pymongo.MongoClient(uri), "livedm")  # everything, past the API's page limits
        jobs = {j["id"]: j for j in reader.list_jobs(kind="delete", limit=100_000)}
        audit = reader.find_audit(limit=1_000_000)
        reader.client.close()
        second.start()  # the stopped one comes back
        restarted = second.call("whoami")["name"] == "admin"
    finally:
        first.stop()
        if second.process is not None:
            second.stop()
        store.stop()
    changes = [e for e in audit if e["action"] == "state_changed"]  # marks, and the deletions' own changes
    marks = [e for e in changes if e.get("by") == "user" and e["status"] != "deleting"]
    deleted = Counter(e["job_id"] for e in audit if e["action"] == "deleted")
    latencies = sorted(report.latencies_s)
    return {
        "requests": len(latencies), "throughput_rps": len(latencies) / elapsed_s,
        "p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
        "errors": len(report.unexpected), "error_samples": report.unexpected[:5], "outcomes": dict(report.outcomes),
        "lost_updates": chain_breaks(changes),
        "doubled_updates": max(0, len(marks) - report.state_changes_ok)
        + sum(n - 1 for n in deleted.values() if n > 1),
        "deletion_jobs": len(report.deletion_jobs),
        "deletion_jobs_not_done": sum(1 for j in report.deletion_jobs if jobs.get(j, {}).get("state") != "done"),
        "deletions_audited": len(deleted), "in_flight_lost": report.in_flight_lost,
        "sigterm_exit": report.sigterm_exit, "sigterm_exit_s": report.sigterm_exit_s, "restarted": restarted,
    }

