"""The state dir: ours alone (`prepare_state_dir`), and one livedmd per state dir: an exclusive lock on
`<state_dir>/livedmd.lock`, held for the process's life.

A second livedmd on the same state dir would start a second embedded store on the same files and
write the same admin token and hook logs; it stops at start with a message naming the holder.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
from pathlib import Path

from .config import Config

log = logging.getLogger(__name__)


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


def prepare_state_dir(config: Config) -> None:
    """The state dir holds the admin token and the embedded store's socket: ours alone, mode 0700, and only
    under directories no other user may change. Else that user could rename the state dir away and put a
    store of their own in its place, which livedmd would trust at its next pool connection. As OpenSSH's
    StrictModes: every directory above it (symlinks resolved, the links' own directories too) must belong to
    root or livedmd's user and be writable by no one else, unless it has the sticky bit (like /tmp)."""
    path = Path(os.path.abspath(config.state_dir))
    me = os.geteuid()
    consequence = "could put a database of their own in the state dir's place and become livedm's admin"

    def why_unsafe(directory: Path) -> str | None:
        st = os.stat(directory)
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid not in (0, me):
            return (f"the state dir {path} lies under {directory}, which belongs to uid {st.st_uid}, neither root "
                    f"nor livedmd's user (uid {me}): that user {consequence}. Give {directory} to root "
                    f"(chown root {directory}) or give livedmd a state dir elsewhere (--state-dir)")
        if mode & 0o022 and not mode & stat.S_ISVTX:
            return (f"the state dir {path} lies under {directory}, which users other than its owner may write "
                    f"(mode {mode:o}): any of them {consequence}. Make it writable by its owner only (chmod go-w "
                    f"{directory}) or sticky like /tmp (chmod +t {directory}), or give livedmd a state dir under "
                    "directories only root or its own user may change (--state-dir)")
        return None

    def refuse_unsafe_ancestors() -> None:
        checked: set[Path] = set()
        for prefix in (*reversed(path.parents), path):
            if not os.path.lexists(prefix):
                break
            link = os.lstat(prefix)
            if stat.S_ISLNK(link.st_mode) and link.st_uid not in (0, me):
                raise RuntimeError(f"the state dir {path} is reached through the symlink {prefix}, which belongs "
                                   f"to uid {link.st_uid}, neither root nor livedmd's user (uid {me}): that user "
                                   f"{consequence}. Name the real directory (--state-dir)")
            real = Path(os.path.realpath(prefix))
            for directory in (*real.parents, *([real] if prefix != path else [])):  # the state dir: ours to fix
                if directory not in checked:
                    checked.add(directory)
                    why = why_unsafe(directory)
                    if why is not None:
                        raise RuntimeError(why)

    refuse_unsafe_ancestors()  # before anything is made there
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    refuse_unsafe_ancestors()  # the directories just made too (a umask of 0 makes them 0777)
    st = os.stat(path)
    if st.st_uid != me:
        raise RuntimeError(f"the state dir {path} belongs to uid {st.st_uid}, not to livedmd's user "
                           f"(uid {me}); give livedmd a state dir of its own (--state-dir)")
    if st.st_mode & 0o077:
        log.warning("the state dir %s was open to other users (mode %o); now 0700", path, st.st_mode & 0o777)
        os.chmod(path, 0o700)
