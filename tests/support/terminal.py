"""The livedm client run as a person runs it: its stdin a terminal (a pseudo-terminal), answering its question."""

from __future__ import annotations

import os
import pty
import subprocess

from testkit.daemon import BIN, Daemon


def livedm_at_terminal(daemon: Daemon, *args: str, typed: str, env: dict[str, str] | None = None,
                       ) -> subprocess.CompletedProcess[str]:
    """Run `livedm args` with a terminal as its stdin, on which `typed` (and Enter) is typed."""
    primary, secondary = pty.openpty()
    try:
        client_env = {**os.environ, "LIVEDM_URL": daemon.url, "LIVEDM_TOKEN": daemon.token, **(env or {})}
        process = subprocess.Popen([str(BIN / "livedm"), *args], stdin=secondary, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env=client_env, text=True)
        os.write(primary, typed.encode() + b"\n")
        stdout, stderr = process.communicate(timeout=120)
    finally:
        os.close(primary)
        os.close(secondary)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
