"""livedmd's child processes: tied to its life (die_with_parent), ended with everything they left behind
(kill_session), and systemd told how livedmd itself is doing (notify).

Ending every process a child left behind: the members of its session, found through /proc.

A child started with start_new_session=True leads a session whose id is its pid. Whatever it
forks, double-forks or puts in the background stays in that session (and in no other) unless it
calls setsid() itself: that is the gap left open here, closed only by a cgroup (a systemd scope),
which livedmd does not require. Linux only (/proc); elsewhere nothing is found and nothing killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import time

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
POLL_S = 0.05
KILL_ROUNDS = 5  # SIGKILL rounds: a member may fork between our listing and our signal


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on; the command name (field 2) may hold spaces and ')'."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            text = fh.read().decode(errors="replace")
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def session_members(session_id: int) -> list[int]:
    """Live (not zombie) processes whose session id is `session_id`."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        # fields: state, ppid, pgrp, session, ...
        if fields is not None and len(fields) > 3 and fields[3] == str(session_id) and fields[0] != "Z":
            members.append(int(entry))
    return members


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def kill_session(session_id: int, grace_s: float) -> int:
    """SIGTERM every member of the session, SIGKILL those left after `grace_s`. How many were signalled.

    The caller keeps the session leader unreaped (a zombie) meanwhile, so that its pid, which is the
    session id, cannot be reused by an unrelated process while we look for members.
    """
    members = session_members(session_id)
    if not members:
        return 0
    _signal_all(members, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while (left := session_members(session_id)) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    for _round in range(KILL_ROUNDS):
        if not left:
            break
        _signal_all(left, signal.SIGKILL)
        time.sleep(POLL_S)
        left = session_members(session_id)
    return len(members)


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when the thread that started it exits (livedmd dies)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def notify(state: str) -> bool:
    """Tell systemd (sd_notify) e.g. "READY=1" through $NOTIFY_SOCKET: Type=notify units learn that
    livedmd serves only once it does. False when not run by systemd or when systemd cannot be told;
    never raises (a notification must not stop the daemon)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("could not tell systemd %s: %s", state, exc)
        return False
    return True
