"""One livedmd per state dir: an exclusive lock on `<state_dir>/livedmd.lock`, held for the process's life.

A second livedmd on the same state dir would start a second embedded store on the same files and
write the same admin token and hook logs; it stops at start with a message naming the holder.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class StateDirBusy(RuntimeError):
    """Another process holds the state dir."""


class StateDirLock:
    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / "livedmd.lock"
        self._fd: int | None = None

    def acquire(self) -> StateDirLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StateDirBusy(f"the state dir {self.path.parent} is in use by livedmd pid {holder}; stop it "
                               "first, or give this one its own --state-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd = None

    def __enter__(self) -> StateDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
