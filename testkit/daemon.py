"""Real livedmd processes for end-to-end tests, and the livedm client run as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from livedm.server.embedded import free_port

BIN = Path(sys.executable).parent


class Daemon:
    def __init__(self, state_dir: Path, port: int | None = None, env: dict[str, str] | None = None,
                 args: list[str] | None = None) -> None:
        self.state_dir = state_dir
        self.port = port or free_port()
        self.env = {**os.environ}
        for name in ("LIVEDM_URL", "LIVEDM_TOKEN", "LIVEDM_TOKEN_FILE", "LIVEDM_CONFIG"):
            self.env.pop(name, None)
        # livedmd refuses to start without data roots: the test's own directory is the default one
        self.env["LIVEDM_DATA_ROOTS"] = str(state_dir.parent)
        # and no scheduled discovery or refresh in the middle of a test, unless it asks
        self.env["LIVEDM_DISCOVER_INTERVAL"] = "0"
        self.env["LIVEDM_REFRESH_INTERVAL"] = "0"
        self.env.update(env or {})
        self.args = args or []
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = state_dir.parent / f"livedmd-{state_dir.name}-{self.port}.log"
        self.token_file = state_dir / "admin.token"  # another daemon's, when they share a database

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip()

    def start(self, timeout_s: float = 30.0) -> Daemon:
        return self.spawn().wait_ready(timeout_s)

    def spawn(self) -> Daemon:
        """Start livedmd and return at once: wait_ready() waits for it (start() is both)."""
        argv = [str(BIN / "livedmd"), "--state-dir", str(self.state_dir), "--port", str(self.port), *self.args]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout_s: float = 30.0) -> Daemon:
        assert self.process is not None, "spawn() first"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"livedmd exited with {self.process.returncode}:\n{self.log()}")
            if self.ready():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"livedmd was not ready in {timeout_s} s:\n{self.log()}")

    def ready(self) -> bool:
        """What start() waits for: /healthz says ok (with --worker-only, which serves no HTTP, the log
        says the workers run)."""
        if "--worker-only" in self.args:
            return "worker-only mode" in self.log()
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=1) as response:
                return bool(json.loads(response.read())["status"] == "ok")
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout_s)
        self.process = None
        return code

    def rpc(self, method: str, params: Any = None, token: str | None = None,
            timeout_s: float = 120) -> dict[str, Any]:
        """The whole JSON-RPC reply, errors included (also one sent with an HTTP error status)."""
        body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params or [], "id": 1}).encode()
        request = urllib.request.Request(self.url + "/api", data=body, headers={
            "Authorization": f"Bearer {token or self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            try:
                return dict(json.loads(exc.read()))
            except ValueError:
                raise exc from None

    def call(self, method: str, params: Any = None, *, timeout_s: float = 60) -> Any:
        """The result of a call as the admin; an AssertionError naming the error if it failed."""
        reply = self.rpc(method, params, timeout_s=timeout_s)
        if "error" in reply:
            raise AssertionError(f"{method} failed: {reply['error']}")
        return reply["result"]

    def batch(self, calls: list[tuple[str, Any]], batch_calls: int = 100) -> list[Any]:
        """The results of many calls as the admin, sent as JSON-RPC batches of at most `batch_calls` (livedmd's
        default max_batch_calls); an AssertionError naming the first error."""
        results: list[Any] = []
        for start in range(0, len(calls), batch_calls):
            chunk = calls[start:start + batch_calls]
            body = json.dumps([{"jsonrpc": "2.0", "method": m, "params": p, "id": i} for i, (m, p) in enumerate(chunk)])
            request = urllib.request.Request(self.url + "/api", data=body.encode(), headers={
                "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=600) as response:
                replies = sorted(json.loads(response.read()), key=lambda r: r["id"])
            errors = [r["error"] for r in replies if "error" in r]
            assert not errors, f"{len(errors)} of {len(chunk)} calls failed, the first: {errors[0]}"
            results += [r["result"] for r in replies]
        return results

    def livedm(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """The client as a user runs it: a subprocess that finds the daemon through the environment."""
        client_env = {**os.environ, "LIVEDM_URL": self.url, "LIVEDM_TOKEN": self.token, **(env or {})}
        return subprocess.run([str(BIN / "livedm"), *args], env=client_env, capture_output=True, text=True,
                              timeout=120)


def start_together(*daemons: Daemon, timeout_s: float = 30.0) -> None:
    """Start several livedmd at once rather than one after the other. On one database only the first to
    make the admin user writes its token file: those without one get that daemon's token file."""
    for daemon in daemons:
        daemon.spawn()
    try:
        for daemon in daemons:
            daemon.wait_ready(timeout_s)
    except BaseException:
        for daemon in daemons:
            if daemon.process is not None:
                daemon.process.kill()
                daemon.process.wait()
                daemon.process = None
        raise
    written = [d.token_file for d in daemons if d.token_file.exists()]
    for daemon in daemons:
        if written and not daemon.token_file.exists():
            daemon.token_file = written[0]
