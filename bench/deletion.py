"""Deleting a 100k-file category through the job (a real livedmd on the embedded store, request to
finished job) vs `rm -rf` of an identical tree, in the same run."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

from testkit.daemon import Daemon

FILES = 100_000
PER_DIR = 2_000


def build(root: Path) -> None:
    for d in range(FILES // PER_DIR):
        directory = root / f"blob{d:03d}"
        directory.mkdir(parents=True)
        for i in range(PER_DIR):
            with open(directory / f"particles_{i:05d}.mrc", "wb") as fh:
                fh.write(b"p" * (i % 50))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build(root / "proj" / "S1" / "extract")
        build(root / "copy" / "extract")
        daemon = Daemon(root / "state").start()
        try:
            daemon.call("create_project", ["bench", str(root / "proj")])
            daemon.call("create_live_session", ["P1", "bench"])
            daemon.call("mark_session_completed", ["P1", "S1"])  # scans: the 100k files are registered
            started = time.perf_counter()
            job = daemon.call("delete_live_datatype", {"project_uid": "P1", "session_uid": "S1",
                                                       "datatype": "particles", "asynchronous": False})
            ours = time.perf_counter() - started
            assert job["state"] == "done" and job["result"]["deleted"] == FILES, job
        finally:
            daemon.stop()
        started = time.perf_counter()
        subprocess.run(["rm", "-rf", str(root / "copy" / "extract")], check=True)
        baseline = time.perf_counter() - started
    print(f"deletion: rm -rf of {FILES} files {baseline:.3f} s | livedm delete_live_datatype job (request to done, "
          f"with rescan) {ours:.3f} s = {ours / baseline:.2f}x (target <= 2x)")


if __name__ == "__main__":
    main()
