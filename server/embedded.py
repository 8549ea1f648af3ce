"""The zero-setup store: an nx-27017 child process (MongoDB wire protocol on SQLite) in the state dir,
reachable only through a Unix socket that only the service's user may open.

livedmd owns the child: it starts it before serving and stops it last. The child gets SIGTERM from
the kernel when livedmd dies, even by `kill -9` (Linux PR_SET_PDEATHSIG), and a child left over
anyway (other platforms) is recognised by its pid file and stopped at the next start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import pymongo

from .processes import die_with_parent

log = logging.getLogger(__name__)

_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes with its NUL; keep a margin


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\x00", b" ").decode(errors="replace")
    except OSError:
        return ""


class EmbeddedStore:
    """Start with start(), which returns the MongoDB URI; stop() when done. Must be started from the
    main thread: the kernel's parent-death signal follows the thread that forked.

    The store listens on a Unix socket (mode 0600, in a 0700 directory), never on TCP: no other local
    user can reach livedm's database."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.directory = Path(state_dir) / "embedded"
        self.data_dir = self.directory / "data"  # one SQLite file per database, as isolated as MongoDB's
        self.pid_path = self.directory / "nx-27017.pid"
        self.log_path = self.directory / "nx-27017.log"
        self._private_dir: Path | None = None
        self.socket_path = self.directory / "db.sock"  # until start() decides
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def _socket_path(self) -> Path:
        """In the state dir; where that path is too long for a Unix socket (108 bytes), in a private
        0700 directory of the runtime dir instead."""
        preferred = self.directory / "db.sock"
        if len(os.fsencode(preferred)) <= _MAX_SOCKET_PATH:
            return preferred
        base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
        self._private_dir = Path(tempfile.mkdtemp(prefix="livedm-store-", dir=base))
        return self._private_dir / "db.sock"

    @property
    def uri(self) -> str:
        return f"mongodb://{quote(str(self.socket_path), safe='')}/?directConnection=true"

    def start(self, timeout_s: float = 30.0) -> str:
        self.spawn()
        self.wait_ready(timeout_s)
        return self.uri

    def spawn(self) -> None:
        """Start the process (quick; from the main thread). wait_ready() then waits for it to answer."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)
        if self._private_dir is None:
            self.socket_path = self._socket_path()
        self._stop_leftover()
        self.data_dir.mkdir(exist_ok=True, mode=0o700)
        argv = [sys.executable, "-m", "livedm.server.store_server", "--data-dir", str(self.data_dir),
                "--socket", str(self.socket_path)]
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent)
        self.pid_path.write_text(str(self.process.pid))

    def respawn(self) -> None:
        """After the store died: start it again on the same socket (clients reconnect by themselves);
        then wait_ready()."""
        self.stop(final=False)
        self.restarts += 1
        self.spawn()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 10.0, final: bool = True) -> None:
        if final and self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()
        self.process = None

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        client: pymongo.MongoClient = pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=500)
        process = self.process
        try:
            while True:
                if process is None or process is not self.process:
                    raise RuntimeError("the embedded store was stopped while it started")
                if process.poll() is not None:
                    raise RuntimeError(f"the embedded store exited with status {process.returncode}; "
                                       f"see {self.log_path}")
                try:
                    client.admin.command("ping")
                    log.info("embedded store (nx-27017, pid %d) serving %s on %s",
                             process.pid, self.data_dir, self.socket_path)
                    return
                except pymongo.errors.PyMongoError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"the embedded store did not answer within {timeout_s:.0f} s; "
                                           f"see {self.log_path}") from None
                    time.sleep(0.1)
        finally:
            client.close()

    def _stop_leftover(self) -> None:
        """A child of a livedmd that died without taking it along still holds our database: stop it."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return
        if "store_server" not in _cmdline(pid) or str(self.data_dir) not in _cmdline(pid):
            return
        log.warning("stopping a leftover embedded store (pid %d) from an earlier run", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _cmdline(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _cmdline(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
