"""Attacks on livedm's database and state dir as a local user or a careless admin would try them.

Issue 8, critical 1 and medium 8: the embedded store must be unreachable for other local users, a
dead store is restarted (or livedmd exits for systemd to restart it), and a second livedmd on the
same state dir stops at start without touching the first one's store.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.daemon import BIN, Daemon

SPARE_UID = 65534  # nobody
SYSTEM_PYTHON = "/usr/bin/python3"

CONNECT_AS_SPARE_UID = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print("refused", exc.errno)
else:
    print("connected")
"""


@pytest.fixture
def open_base() -> Iterator[Path]:
    """A directory every local user may traverse (mode 0755), unlike pytest's own 0700 tmp dirs: so
    that only livedm's protections stand between another user and the socket."""
    base = Path(tempfile.mkdtemp(prefix="livedm-attack-", dir="/tmp"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _connect_as_spare_uid(path: Path) -> str:
    result = subprocess.run([SYSTEM_PYTHON, "-c", CONNECT_AS_SPARE_UID, str(path)], user=SPARE_UID,
                            group=SPARE_UID, extra_groups=[], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _store_pid(state_dir: Path) -> int:
    return int((state_dir / "embedded" / "nx-27017.pid").read_text())


def _tcp_listening_inodes() -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            next(fh)
            for line in fh:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    inodes.add(fields[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another uid needs root (CI runs as root)")
def test_another_local_user_cannot_reach_the_embedded_store(open_base: Path) -> None:
    state_dir = open_base / "state"
    state_dir.mkdir(mode=0o755)  # a careless admin made it readable by all
    state_dir.chmod(0o755)
    daemon = Daemon(state_dir, env={"LIVEDM_DATA_ROOTS": str(open_base)}).start()
    try:
        socket_path = state_dir / "embedded" / "db.sock"
        assert socket_path.is_socket()
        assert state_dir.stat().st_mode & 0o777 == 0o700, "livedmd closes its state dir at start"
        assert socket_path.stat().st_mode & 0o777 == 0o600
        assert _connect_as_spare_uid(socket_path).startswith("refused 13")  # EACCES

        # The control: the same path setup with a socket open to all is reachable by that uid, so the
        # refusal above comes from livedm's modes, not from the test's setup.
        control_dir = open_base / "control"
        control_dir.mkdir(mode=0o755)
        control_dir.chmod(0o755)
        control_path = control_dir / "open.sock"
        control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        control.bind(str(control_path))
        control.listen()
        control_path.chmod(0o777)
        try:
            assert _connect_as_spare_uid(control_path) == "connected"
        finally:
            control.close()

        # No TCP port at all: nothing for /proc/net/tcp to reveal.
        store_pid = _store_pid(state_dir)
        assert not _socket_inodes(store_pid) & _tcp_listening_inodes()
        assert daemon.call("whoami")["name"] == "admin"
    finally:
        daemon.stop()


def test_a_second_livedmd_on_the_same_state_dir_stops_and_leaves_the_first_alone(tmp_path: Path) -> None:
    first = Daemon(tmp_path / "state").start()
    try:
        store_pid = _store_pid(first.state_dir)
        project = tmp_path / "data" / "P1"
        project.mkdir(parents=True)
        first.call("create_project", {"title": "kept", "project_dir": str(project)})
        second = Daemon(tmp_path / "state")
        with pytest.raises(RuntimeError, match="in use by livedmd pid"):
            second.start(timeout_s=20)
        assert _store_pid(first.state_dir) == store_pid, "the first daemon's store was not replaced"
        os.kill(store_pid, 0)
        assert [p["title"] for p in first.call("list_projects")] == ["kept"]
    finally:
        first.stop()


def _call(url: str, token: str, method: str, timeout_s: float = 30) -> tuple[float, dict]:
    body = json.dumps({"jsonrpc": "2.0", "method": method, "params": [], "id": 1}).encode()
    request = urllib.request.Request(url + "/api", data=body, headers={"Authorization": f"Bearer {token}"})
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        assert response.status == 200
        return time.monotonic() - started, json.loads(response.read())


def test_a_dead_embedded_store_is_restarted_and_nothing_is_lost(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "state").start()
    try:
        project = tmp_path / "P1"
        project.mkdir()
        daemon.call("create_project", {"title": "survives", "project_dir": str(project)})
        first_pid = _store_pid(daemon.state_dir)
        os.kill(first_pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            seconds, reply = _call(daemon.url, daemon.token, "list_projects")
            assert seconds < 8, "a call while the store is away answers quickly"
            if "result" in reply:
                break
            assert reply["error"]["code"] == -32603
            assert "database" in reply["error"]["message"]
            assert time.monotonic() < deadline, "the store did not come back"
            time.sleep(0.2)
        assert [p["title"] for p in reply["result"]] == ["survives"]
        assert _store_pid(daemon.state_dir) != first_pid
        with urllib.request.urlopen(daemon.url + "/healthz", timeout=5) as response:
            assert json.loads(response.read())["embedded_store"]["ok"] is True
        assert "the embedded store died" in daemon.log()
    finally:
        daemon.stop()


def test_livedmd_exits_non_zero_when_the_store_keeps_dying(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "state", env={"LIVEDM_EMBEDDED_MAX_RESTARTS": "0"}).start()
    os.kill(_store_pid(daemon.state_dir), signal.SIGKILL)
    started = time.monotonic()
    assert daemon.process is not None
    code = daemon.process.wait(30)
    daemon.process = None
    assert code == 1, "systemd restarts the unit on a non-zero exit"
    assert time.monotonic() - started < 30
    assert "the embedded store keeps dying" in daemon.log()


# --- attack pass 2: a state dir under a directory others may change --------------------------------

RENAME_AS_SPARE_UID = """
import os, sys
try:
    os.rename(sys.argv[1], sys.argv[2])
except OSError as exc:
    print("refused", exc.errno)
else:
    print("renamed")
"""


def _livedmd(state_dir: Path, data_root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LIVEDM_DATA_ROOTS": str(data_root)}
    return subprocess.run([str(BIN / "livedmd"), "--state-dir", str(state_dir), "--port", "0"], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_a_state_dir_under_a_directory_others_may_write_is_refused(tmp_path: Path, mode: int) -> None:
    """The attack: with --state-dir /tmp/x/shared/state and shared mode 0777, another user renamed the state
    dir away, put a store of their own at state/embedded/db.sock, and livedmd's next pool connection made
    them admin. livedmd now refuses such a state dir at start, before making anything in it."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    refused = _livedmd(shared / "state", tmp_path)
    assert refused.returncode == 1, refused.stderr
    assert (f"the state dir {shared / 'state'} lies under {shared}, which users other than its owner may write "
            f"(mode {mode:o})") in refused.stderr
    assert f"chmod go-w {shared}" in refused.stderr and f"chmod +t {shared}" in refused.stderr
    assert not (shared / "state").exists()


def test_a_state_dir_under_a_sticky_directory_all_may_write_is_accepted(tmp_path: Path) -> None:
    """The way out the refusal above names (once, not for each mode it refuses)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # sticky, like /tmp: others may add entries, but not rename or remove ours
    daemon = Daemon(shared / "state", env={"LIVEDM_DATA_ROOTS": str(tmp_path)}).start()
    try:
        assert daemon.call("whoami")["name"] == "admin"
    finally:
        daemon.stop()


def test_a_state_dir_made_under_a_careless_umask_is_refused(tmp_path: Path) -> None:
    """Directories livedmd makes on the way to its state dir count too: under umask 0 they come out 0777."""
    env = {**os.environ, "LIVEDM_DATA_ROOTS": str(tmp_path)}
    state_dir = tmp_path / "new" / "state"
    refused = subprocess.run(["/bin/sh", "-c", 'umask 000 && exec "$0" --state-dir "$1" --port 0',
                              str(BIN / "livedmd"), str(state_dir)], env=env, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 1
    assert f"lies under {tmp_path / 'new'}, which users other than its owner may write (mode 777)" in refused.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another uid needs root (CI runs as root)")
def test_under_a_sticky_parent_another_user_cannot_move_the_state_dir_away(open_base: Path) -> None:
    shared = open_base / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    daemon = Daemon(shared / "state", env={"LIVEDM_DATA_ROOTS": str(open_base)}).start()
    try:
        result = subprocess.run([SYSTEM_PYTHON, "-c", RENAME_AS_SPARE_UID, str(shared / "state"),
                                 str(shared / "moved")], user=SPARE_UID, group=SPARE_UID, extra_groups=[],
                                capture_output=True, text=True, timeout=30)
        assert result.stdout.strip() == "refused 1", result.stderr  # EPERM: the sticky bit
        assert daemon.call("whoami")["name"] == "admin"
    finally:
        daemon.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another uid needs root")
def test_a_state_dir_under_another_users_directory_or_symlink_is_refused(open_base: Path) -> None:
    theirs = open_base / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, SPARE_UID, SPARE_UID)
    refused = _livedmd(theirs / "state", open_base)
    assert refused.returncode == 1
    assert (f"lies under {theirs}, which belongs to uid {SPARE_UID}, neither root nor livedmd's user (uid 0)"
            in refused.stderr) and f"chown root {theirs}" in refused.stderr
    sticky = open_base / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    (open_base / "real").mkdir(mode=0o755)
    link = sticky / "state"
    link.symlink_to(open_base / "real" / "state")
    os.lchown(link, SPARE_UID, SPARE_UID)  # its owner may replace it: the sticky bit allows that
    refused = _livedmd(link, open_base)
    assert refused.returncode == 1
    assert f"is reached through the symlink {link}, which belongs to uid {SPARE_UID}" in refused.stderr
    assert not (open_base / "real" / "state").exists()


def test_livedmd_stops_when_its_store_directory_is_swapped(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "state").start()
    embedded = daemon.state_dir / "embedded"
    embedded.rename(daemon.state_dir / "embedded.moved")  # what a user able to write above would do
    embedded.mkdir(mode=0o700)
    assert daemon.process is not None
    code = daemon.process.wait(30)
    daemon.process = None
    assert code == 1
    assert "was moved or replaced" in daemon.log()
