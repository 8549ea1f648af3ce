"""Deleting a 100k-file category through the job vs `rm -rf` of an identical tree, in the same run.

Both are timed warm (the trees' inodes and dentries cached, as after a scan) and cold (page cache,
dentries and inodes dropped with `echo 3 > /proc/sys/vm/drop_caches` before each timed run; needs
root, skipped otherwise), over several rounds that alternate which goes first (ours then rm -rf, then
rm -rf then ours, ...); the figures are medians. Before each timed run: `sync`, so neither pays for
the other's writeback.

- ours: from sending `delete_live_datatype(..., asynchronous=False)` (a real livedmd on the embedded
  store, over HTTP) to the job's `finished_at`: planning and saving the confirmed list, queueing, the
  job (checks, reading the list, unlinking, the registry and the rescan, settling the category) and
  recording it done. Not the wait for the answer after that (the daemon looks at the job at most
  every 0.5 s).
- rm -rf: the whole `rm -rf <session>/extract` process (fork, exec, every unlink, and the rmdir of the
  50 directories and extract/ itself, which the job leaves in place: SPEC deletes files only).

The phases come from the daemon's log: request (the plan: checks and the category's registry read;
the confirmed list saved; the job queued), prepare (checks, confirmed and registered lists read, raw
movies found), unlink, settle (registry, rescan, status, audit); "other" is what is left: HTTP, the
worker's claim, recording the job done.

On a machine shared with other work, wall times swing with its load; the CPU seconds each side spent
(rm: the process; ours: livedmd and its embedded store) are steadier and are printed beside them.

`BENCH_DELETION_ROUNDS` (default 5) sets the rounds per variant.
"""

from __future__ import annotations

import os
import re
import resource
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from testkit.daemon import Daemon

FILES = 100_000
PER_DIR = 2_000
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
REQUEST_LOG = re.compile(r"deletion (J\d+) requested: \d+ files in ([\d.]+) s \(plan ([\d.]+) s, "
                         r"confirmed list saved ([\d.]+) s\)")
JOB_LOG = re.compile(r"deletion (J\d+): \d+ files deleted in ([\d.]+) s \(prepare ([\d.]+) s, "
                     r"unlink ([\d.]+) s, settle ([\d.]+) s\)")


@dataclass
class Round:
    ours_s: float
    rm_s: float
    phases_s: dict[str, float]
    ours_cpu_s: float
    rm_cpu_s: float

    @property
    def ratio(self) -> float:
        return self.ours_s / self.rm_s

    def line(self) -> str:
        phases = ", ".join(f"{name} {seconds:.3f}" for name, seconds in self.phases_s.items())
        return (f"ours {self.ours_s:.3f} s, rm -rf {self.rm_s:.3f} s, {self.ratio:.2f}x; CPU {self.ours_cpu_s:.2f} s "
                f"vs {self.rm_cpu_s:.2f} s ({phases})")


def build(root: Path) -> None:
    for d in range(FILES // PER_DIR):
        directory = root / f"blob{d:03d}"
        directory.mkdir(parents=True)
        for i in range(PER_DIR):
            with open(directory / f"particles_{i:05d}.mrc", "wb") as fh:
                fh.write(b"p" * (i % 50))


def epoch_s(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def settle_disk(cold: bool) -> None:
    subprocess.run(["sync"], check=True)
    if cold:
        DROP_CACHES.write_text("3\n")


def warm(*trees: Path) -> None:
    for tree in trees:
        subprocess.run(["du", "-sb", str(tree)], check=True, capture_output=True)


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its descendants (livedmd and its embedded store)."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    used: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        used[int(entry.name)] = int(fields[11]) + int(fields[12])
    total, wanted = 0, {pid}
    while wanted:
        total += sum(used.get(p, 0) for p in wanted)
        wanted = {child for child, parent in parents.items() if parent in wanted}
    return total / ticks


def time_rm(tree: Path, cold: bool) -> tuple[float, float]:
    settle_disk(cold)
    cpu_s = children_cpu_s()
    started = time.perf_counter()
    subprocess.run(["rm", "-rf", str(tree)], check=True)
    return time.perf_counter() - started, children_cpu_s() - cpu_s


def time_ours(daemon: Daemon, project_uid: str, cold: bool) -> tuple[float, dict[str, float], float]:
    assert daemon.process is not None
    settle_disk(cold)
    cpu_s = tree_cpu_s(daemon.process.pid)
    sent = time.time()
    reply = daemon.rpc("delete_live_datatype", {"project_uid": project_uid, "session_uid": "S1",
                                                "datatype": "particles", "asynchronous": False}, timeout_s=3600)
    job = reply["result"]
    assert job["state"] == "done" and job["result"]["deleted"] == FILES, reply
    ours_s = epoch_s(job["finished_at"]) - sent
    return ours_s, phases(daemon, job["id"], total_s=ours_s), tree_cpu_s(daemon.process.pid) - cpu_s


def phases(daemon: Daemon, job_id: str, *, total_s: float) -> dict[str, float]:
    log = daemon.log()
    request = next(m for m in REQUEST_LOG.finditer(log) if m[1] == job_id)
    job = next(m for m in JOB_LOG.finditer(log) if m[1] == job_id)
    out = {"request": float(request[2]), "of it saving the list": float(request[4]), "prepare": float(job[3]),
           "unlink": float(job[4]), "settle": float(job[5])}
    out["other"] = total_s - out["request"] - float(job[2])
    return out


def one_round(daemon: Daemon, root: Path, name: str, *, cold: bool, ours_first: bool) -> Round:
    project = root / f"proj-{name}"
    copy = root / f"copy-{name}" / "S1" / "extract"
    build(project / "S1" / "extract")
    build(copy)
    project_uid = daemon.call("create_project", [name, str(project)])["uid"]
    daemon.call("create_live_session", [project_uid, "bench"])
    daemon.call("mark_session_completed", [project_uid, "S1"])  # scans: the 100k files are registered
    warm(project, copy)
    if ours_first:
        ours_s, phases_s, ours_cpu_s = time_ours(daemon, project_uid, cold)
        rm_s, rm_cpu_s = time_rm(copy, cold)
    else:
        rm_s, rm_cpu_s = time_rm(copy, cold)
        ours_s, phases_s, ours_cpu_s = time_ours(daemon, project_uid, cold)
    assert not copy.exists()
    return Round(ours_s, rm_s, phases_s, ours_cpu_s, rm_cpu_s)


def report(variant: str, rounds: list[Round]) -> None:
    ours = statistics.median(r.ours_s for r in rounds)
    rm = statistics.median(r.rm_s for r in rounds)
    ratios = sorted(r.ratio for r in rounds)
    print(f"deletion ({variant}, {len(rounds)} rounds, medians): rm -rf of {FILES} files {rm:.3f} s | livedm "
          f"delete_live_datatype (request to job finished) {ours:.3f} s = {statistics.median(ratios):.2f}x "
          f"(median of the rounds' ratios; range {ratios[0]:.2f}x-{ratios[-1]:.2f}x; target <= 1.2x)")
    ours_cpu = statistics.median(r.ours_cpu_s for r in rounds)
    rm_cpu = statistics.median(r.rm_cpu_s for r in rounds)
    print(f"  CPU seconds (medians): rm -rf {rm_cpu:.3f} s | ours {ours_cpu:.3f} s = {ours_cpu / rm_cpu:.2f}x")
    names = list(rounds[0].phases_s)
    print("  ours by phase (medians): " + ", ".join(
        f"{n} {statistics.median(r.phases_s[n] for r in rounds):.3f} s" for n in names))


def main() -> None:
    rounds = int(os.environ.get("BENCH_DELETION_ROUNDS", "5"))
    can_drop = os.access(DROP_CACHES, os.W_OK)
    variants = ["warm", "cold"] if can_drop else ["warm"]
    if not can_drop:
        print("deletion: cold variant skipped (dropping caches needs root)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        daemon = Daemon(root / "state").start()
        try:
            for variant in variants:
                results: list[Round] = []
                for i in range(rounds):
                    result = one_round(daemon, root, f"{variant}{i}", cold=variant == "cold", ours_first=i % 2 == 0)
                    print(f"  {variant} round {i + 1}: {result.line()}", flush=True)
                    results.append(result)
                report(variant, results)
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()
