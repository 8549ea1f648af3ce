"""Real livedmd processes for end-to-end tests, and the livedm client run as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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
        argv = [str(BIN / "livedmd"), "--state-dir", str(self.state_dir), "--port", str(self.port), *self.args]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"livedmd exited with {self.process.returncode}:\n{self.log()}")
            if "--worker-only" in self.args:  # no HTTP server to ask
                if "worker-only mode" in self.log():
                    return self
                time.sleep(0.1)
                continue
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as response:
                    if json.loads(response.read())["status"] == "ok":
                        return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"livedmd did not become healthy in {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout_s)
        self.process = None
        return code

    def call(self, method: str, params: Any = None) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params or [], "id": 1}).encode()
        request = urllib.request.Request(self.url + "/api", data=body, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            reply = json.loads(response.read())
        if "error" in reply:
            raise AssertionError(f"{method} failed: {reply['error']}")
        return reply["result"]

    def livedm(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """The client as a user runs it: a subprocess that finds the daemon through the environment."""
        client_env = {**os.environ, "LIVEDM_URL": self.url, "LIVEDM_TOKEN": self.token, **(env or {})}
        return subprocess.run([str(BIN / "livedm"), *args], env=client_env, capture_output=True, text=True,
                              timeout=120)
