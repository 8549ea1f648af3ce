"""A JSON-RPC client for livedmd (standard library only): `CommandClient(url, token).get_datatype_size(...)`."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:39070"
SUPPORTED_API_VERSION = 1


class LivedmError(Exception):
    """The server answered with an error, or could not be reached."""

    def __init__(self, message: str, code: int | None = None, name: str = "Error",
                 *, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.name = name
        self.data = data


class Unreachable(LivedmError):
    """No answer from livedmd after the retries."""


def default_state_dir() -> Path:
    """Where a local livedmd keeps its admin token (the daemon's own default, restated: the client
    imports nothing from the server)."""
    if os.environ.get("LIVEDM_STATE_DIR"):
        return Path(os.environ["LIVEDM_STATE_DIR"]).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "livedm"


def find_token() -> str | None:
    """LIVEDM_TOKEN, else the file LIVEDM_TOKEN_FILE, else a local daemon's admin.token if readable."""
    if os.environ.get("LIVEDM_TOKEN"):
        return os.environ["LIVEDM_TOKEN"].strip()
    candidates = [Path(os.environ["LIVEDM_TOKEN_FILE"]).expanduser()] if os.environ.get("LIVEDM_TOKEN_FILE") \
        else [default_state_dir() / "admin.token"]
    for path in candidates:
        try:
            return path.read_text().strip() or None
        except OSError:
            continue
    return None


class CommandClient:
    """Call livedmd's methods as Python methods. Connection failures are retried `retries` times;
    server errors raise LivedmError with the server's code, name and message."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout_s: float = 300.0,
                 *, retries: int = 3, retry_wait_s: float = 1.0) -> None:
        self.url = (url or os.environ.get("LIVEDM_URL") or DEFAULT_URL).rstrip("/")
        self.token = token if token is not None else find_token()
        self.timeout_s = timeout_s
        self.retries = retries
        self.retry_wait_s = retry_wait_s
        self._methods: list[str] | None = None

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if args and kwargs:
            raise ValueError("give either positional or keyword arguments, not both")
        return self.send(method, kwargs if kwargs else list(args))

    def send(self, method: str, params: list[Any] | dict[str, Any]) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params,
                           "id": str(uuid.uuid4())}).encode()
        reply = self._post(body)
        if "error" in reply:
            error = reply["error"] or {}
            raise LivedmError(str(error.get("message", error)), error.get("code"), error.get("name", "Error"),
                              data=error.get("data"))
        return reply.get("result")

    def _post(self, body: bytes) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        last = ""
        for attempt in range(1, self.retries + 1):
            request = urllib.request.Request(self.url + "/api", data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:
                raise LivedmError(f"livedmd at {self.url} answered HTTP {exc.code} {exc.reason}",
                                  exc.code, "HTTPError") from None
            except (urllib.error.URLError, ConnectionError) as exc:
                last = str(getattr(exc, "reason", exc))
            except TimeoutError:
                raise Unreachable(f"livedmd at {self.url} did not answer within {self.timeout_s:.0f} s",
                                  name="Timeout") from None
            except json.JSONDecodeError:
                raise LivedmError(f"{self.url}/api did not answer JSON; is LIVEDM_URL a livedmd?",
                                  name="BadReply") from None
            if attempt < self.retries:
                time.sleep(self.retry_wait_s * attempt)
        raise Unreachable(f"cannot reach livedmd at {self.url} ({last}) after {self.retries} attempts; "
                          "is it running? Set LIVEDM_URL if it listens elsewhere", name="Unreachable")

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _http(self, request: urllib.request.Request) -> Any:
        try:
            return urllib.request.urlopen(request, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            try:
                error = json.loads(exc.read())["error"]
            except (ValueError, KeyError, TypeError):
                raise LivedmError(f"livedmd answered HTTP {exc.code} {exc.reason}", exc.code, "HTTPError") from None
            raise LivedmError(error["message"], error.get("code"), error.get("name", "Error")) from None
        except (urllib.error.URLError, ConnectionError) as exc:
            raise Unreachable(f"cannot reach livedmd at {self.url} ({getattr(exc, 'reason', exc)})",
                              name="Unreachable") from None

    def open_get(self, path: str) -> Any:
        """GET a livedmd URL path (signed in); the open response, to read in pieces and close."""
        return self._http(urllib.request.Request(self.url + path, headers=self._headers()))

    def upload(self, path: str, source: Path) -> Any:
        """POST a file to a livedmd URL path; its JSON answer."""
        with open(source, "rb") as body:
            request = urllib.request.Request(self.url + path, data=body, method="POST", headers={
                **self._headers(), "Content-Type": "application/x-ndjson",
                "Content-Length": str(source.stat().st_size)})
            with self._http(request) as response:
                return json.loads(response.read())

    def methods(self) -> list[str]:
        if self._methods is None:
            described = self.send("system.describe", [])
            version = described.get("api_version", SUPPORTED_API_VERSION)
            if version != SUPPORTED_API_VERSION:
                raise LivedmError(f"livedmd speaks API version {version}; this client speaks "
                                  f"{SUPPORTED_API_VERSION}: upgrade the older of the two", name="VersionMismatch")
            self._methods = [proc["name"] for proc in described["procs"]]
        return self._methods

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        def method(*args: Any, **kwargs: Any) -> Any:
            return self.call(name, *args, **kwargs)

        method.__name__ = name
        return method

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self.methods()))
