"""Sizing one large session (1,000,000 files by default) through `update_session_datatype_sizes` on a real
livedmd over HTTP, against `du -sb` on the same tree in the same run:

- the first refresh (a full walk: every file stat'ed, the registry written; the walk state, the next
  refresh's starting point, is written behind the answer), warm and cold (the page cache dropped before each
  cold run, when this process may: root), and warm with its walk state written;
- an unchanged re-refresh (only directories are opened);
- a re-refresh after 1 % more files (spread over the flat directories, as a Live session grows), beside what
  just listing the directories that changed costs (`ls -f`): the change feed (inotify) spares that.

BENCH_FILES scales the session (e.g. BENCH_FILES=100000 for a quick run).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from testkit.daemon import Daemon

TOTAL_FILES = int(os.environ.get("BENCH_FILES", "1000000"))
SHARES = {"import_movies": 0.10, "motioncorrected": 0.30, "thumbnails": 0.20, "ctfestimated": 0.10}
EXTRACT_SHARE = 0.30  # particle stacks in subdirectories of PER_EXTRACT_DIR files
PER_EXTRACT_DIR = 1000
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def write_files(directory: Path, names: range, movies: Path | None, prefix: str) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    for i in names:
        name = f"{prefix}_{i:07d}.mrc"
        if movies is not None:
            movie = movies / name
            movie.write_bytes(b"m" * (i % 97))
            os.symlink(movie, directory / name)
        else:
            with open(directory / name, "wb") as fh:
                fh.write(b"x" * (i % 89))
    return len(names)


def grow(session: Path, movies: Path, start_fraction: float, fraction: float) -> int:
    """Files numbered from start_fraction to start_fraction + fraction of TOTAL_FILES, in every directory."""
    count = 0
    for sub, share in SHARES.items():
        first, n = int(TOTAL_FILES * share * start_fraction), int(TOTAL_FILES * share * fraction)
        count += write_files(session / sub, range(first, first + n), movies if sub == "import_movies" else None,
                             "FoilHole")
    first, n = int(TOTAL_FILES * EXTRACT_SHARE * start_fraction), int(TOTAL_FILES * EXTRACT_SHARE * fraction)
    for block_start in range(first, first + n, PER_EXTRACT_DIR):
        block = range(block_start, min(block_start + PER_EXTRACT_DIR, first + n))
        count += write_files(session / "extract" / "blob" / "256" / f"{block_start // PER_EXTRACT_DIR:05d}", block,
                             None, "particles")
    return count


def can_drop_caches() -> bool:
    return os.geteuid() == 0 and DROP_CACHES.exists() and os.access(DROP_CACHES, os.W_OK)


def drop_caches() -> None:
    DROP_CACHES.write_text("3\n")


def timed(action: Callable[[], object], *, cold: bool = False) -> float:
    """Seconds `action` takes, after a sync: neither side pays for writeback it did not cause (building the
    tree leaves a million files' metadata to write; the store's first fsync would wait for all of it)."""
    os.sync()
    if cold:
        drop_caches()
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def best_of(runs: int, action: Callable[[], object]) -> float:
    return min(timed(action) for _ in range(runs))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        project, movies = root / "proj", root / "movies"
        movies.mkdir()
        started = time.perf_counter()
        count = grow(project / "S1", movies, 0.0, 1.0)
        print(f"sizing: built a session of {count} files in {time.perf_counter() - started:.0f} s")
        du = ["du", "-sb", str(project / "S1")]

        def run_du() -> None:
            subprocess.run(du, check=True, capture_output=True)

        daemon = Daemon(root / "state").start()
        try:
            daemon.call("create_project", ["bench", str(project)])
            daemon.call("create_live_session", ["P1", "bench"])

            def refresh(full: bool = False) -> None:
                daemon.call("update_session_datatype_sizes", ["P1", "S1", full], timeout_s=3600)

            run_du()  # warm the dentry and inode caches for both; and the raw movies' inodes, which the walk
            # stats through their links (du -sb counts the links themselves)
            subprocess.run(["du", "-sb", str(movies)], check=True, capture_output=True)
            # follow every raw link once, as cryoSPARC Live does reading each movie through it: on a relatime
            # mount a link never followed since it was made has its atime written at the first follow (on this
            # tree, made a minute ago: +0.3 s per 100,000 links), which a real session's links have had
            subprocess.run(["du", "-sbL", str(project / "S1" / "import_movies")], check=True, capture_output=True)
            first_warm = timed(lambda: refresh(True))
            # the walk state is written behind the answer; the next refresh of the session waits for it, so
            # this bounds from above how long the first one took with its walk state written
            first_written = first_warm + timed(refresh)
            du_warm = best_of(3, run_du)
            full_warm = best_of(2, lambda: refresh(True))
            refresh()  # the last full one's walk state written before the unchanged ones are timed
            unchanged = best_of(3, refresh)
            grown_at = time.time()
            added = grow(project / "S1", movies, 1.0, 0.01)
            after_growth = timed(refresh)
            changed_dirs = [str(d) for d in (project / "S1").rglob("*")
                            if d.is_dir() and d.stat().st_mtime >= grown_at - 1]
            listing_floor = best_of(3, lambda: subprocess.run(["ls", "-f", *changed_dirs], check=True,
                                                              stdout=subprocess.DEVNULL))
            check = daemon.call("get_session", ["P1", "S1"])["data_management"]
            micrographs = int(TOTAL_FILES * SHARES["motioncorrected"] * 1.01)
            assert check["micrographs"]["file_count"] == micrographs, check["micrographs"]
            cold = None
            if can_drop_caches():
                cold = (timed(run_du, cold=True), timed(lambda: refresh(True), cold=True))
        finally:
            daemon.stop()
    print(f"sizing: du -sb warm {du_warm:.2f} s")
    print(f"sizing: first refresh (full walk, writes the registry; answered) {first_warm:.2f} s "
          f"= {first_warm / du_warm:.2f}x du -sb warm (target <= 1.0)")
    print(f"sizing:   with its walk state written (+ the next, unchanged refresh, which waits for it) "
          f"{first_written:.2f} s = {first_written / du_warm:.2f}x du -sb warm")
    print(f"sizing: full refresh again {full_warm:.2f} s = {full_warm / du_warm:.2f}x du -sb warm")
    print(f"sizing: unchanged re-refresh {unchanged:.3f} s = {unchanged / du_warm:.3f}x du -sb warm (target <= 0.05)")
    print(f"sizing: after {added} files added (1 %) {after_growth:.3f} s = {after_growth / du_warm:.3f}x du -sb "
          "warm (target <= 0.1)")
    print(f"sizing:   listing the {len(changed_dirs)} directories that changed (ls -f), which the change feed spares, "
          f"takes {listing_floor:.3f} s = {listing_floor / du_warm:.3f}x du -sb warm")
    if cold is None:
        print("sizing: cold runs skipped (dropping the page cache needs root)")
    else:
        print(f"sizing: cold: du -sb {cold[0]:.2f} s, full refresh {cold[1]:.2f} s = {cold[1] / cold[0]:.2f}x "
              "(target <= 0.7)")


if __name__ == "__main__":
    main()
