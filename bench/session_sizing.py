"""Sizing a 100k-file session through `update_session_datatype_sizes` (a real livedmd on the embedded
store, over HTTP) vs `du -sb` on the same tree, in the same run."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from testkit.daemon import Daemon

FILES = {"import_movies": 10_000, "motioncorrected": 40_000, "thumbnails": 20_000, "extract/blob/256": 20_000,
         "ctfestimated": 10_000}


def build_tree(project: Path) -> int:
    session = project / "S1"
    movies = project.parent / "movies"
    movies.mkdir(parents=True)
    count = 0
    for sub, n in FILES.items():
        directory = session / sub
        directory.mkdir(parents=True)
        for i in range(n):
            name = f"FoilHole_{i:06d}.mrc"
            if sub == "import_movies":
                (movies / name).write_bytes(b"m" * (i % 97))
                os.symlink(movies / name, directory / name)
            else:
                with open(directory / name, "wb") as fh:
                    fh.write(b"x" * (i % 89))
            count += 1
    return count


def best_of(runs: int, action: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        project = root / "proj"
        started = time.perf_counter()
        count = build_tree(project)
        print(f"sizing: built a session of {count} files in {time.perf_counter() - started:.1f} s")
        daemon = Daemon(root / "state").start()
        try:
            daemon.call("create_project", ["bench", str(project)])
            daemon.call("create_live_session", ["P1", "bench"])
            du = ["du", "-sb", str(project / "S1")]
            subprocess.run(du, check=True, capture_output=True)  # warm the dentry cache for both
            first = best_of(1, lambda: daemon.call("update_session_datatype_sizes", ["P1", "S1"]))
            steady = best_of(3, lambda: daemon.call("update_session_datatype_sizes", ["P1", "S1"]))
            du_s = best_of(3, lambda: subprocess.run(du, check=True, capture_output=True))
            size = daemon.call("get_session", ["P1", "S1"])["data_management"]["micrographs"]["file_count"]
            assert size == FILES["motioncorrected"], size
        finally:
            daemon.stop()
    print(f"sizing: du -sb {du_s:.3f} s | livedm first refresh (writes the registry) {first:.3f} s "
          f"= {first / du_s:.2f}x | livedm refresh {steady:.3f} s = {steady / du_s:.2f}x du -sb (target <= 2x)")


if __name__ == "__main__":
    main()
