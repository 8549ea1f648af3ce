"""Attacks on livedmd's HTTP side, each against real livedmd processes: it now fails, nothing changes.

Issue 8: connection floods and slow clients (10), oversized batches (9), scoped hook tokens (11),
/healthz when the database or the disk is gone (8, 12), hostile JSON (low), the locked-out admin (low),
and running without data roots (4).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pymongo
import pytest

from livedm.server.auth import token_hash
from livedm.server.embedded import EmbeddedStore
from livedm.server.store import Store
from testkit.daemon import BIN, Daemon
from testkit.sessiontree import build_session_tree
from tests.support.waiting import wait_until

# --- helpers -------------------------------------------------------------------------------------


def post(daemon: Daemon, body: str | bytes, token: str | None = None, timeout_s: float = 10) -> tuple[int, str]:
    """POST /api; the HTTP status and the raw reply text."""
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(daemon.url + "/api", data=data, headers={
        "Authorization": f"Bearer {token or daemon.token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def strict_json(text: str) -> Any:
    """JSON as the standard has it: NaN and Infinity are not JSON."""
    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} in the reply")
    return json.loads(text, parse_constant=refuse)


def rpc(daemon: Daemon, method: str, params: Any = None, token: str | None = None) -> dict[str, Any]:
    status, text = post(daemon, json.dumps({"jsonrpc": "2.0", "method": method, "params": params or {}, "id": 1}),
                        token)
    assert status == 200, text
    return strict_json(text)


def error_code(reply: dict[str, Any]) -> int | None:
    return reply.get("error", {}).get("code")


def get(daemon: Daemon, path: str, timeout_s: float = 10) -> tuple[int, dict[str, str], str]:
    try:
        with urllib.request.urlopen(daemon.url + path, timeout=timeout_s) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def database_view(daemon: Daemon) -> dict[str, Any]:
    """What an attack must not change, as the admin sees it."""
    return {"users": daemon.call("list_users"), "projects": daemon.call("list_projects"),
            "audit": daemon.call("get_audit_log", {"limit": 1000}), "jobs": daemon.call("list_jobs", {"limit": 500})}


def connect(daemon: Daemon) -> socket.socket:
    return socket.create_connection(("127.0.0.1", daemon.port), timeout=10)


def seconds_until_closed(sock: socket.socket, limit_s: float, trickle: bytes = b"", every_s: float = 0.2) -> float:
    """Send `trickle` a byte at a time (if any) until the server closes the connection; how long it took."""
    started = time.monotonic()
    sock.settimeout(every_s)
    position = 0
    while time.monotonic() - started < limit_s:
        try:
            if trickle:
                sock.sendall(trickle[position % len(trickle):position % len(trickle) + 1])
                position += 1
            if sock.recv(65536) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - started
    raise AssertionError(f"the server kept the connection open for {limit_s} s")


def read_one_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(65536)
    return head


class LenientDaemon(Daemon):
    """A daemon whose /healthz may fail: started once it answers at all."""

    def ready(self) -> bool:
        try:
            get(self, "/healthz", timeout_s=2)
            return True
        except OSError:
            return False


@pytest.fixture(scope="module")
def slow_clients_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """Short timeouts and a small batch cap, shared by the tests that only read."""
    state = tmp_path_factory.mktemp("slow") / "state"
    daemon = Daemon(state, args=["--keepalive-timeout-s", "4", "--request-timeout-s", "1.5",
                                 "--max-batch-calls", "5"]).start()
    yield daemon
    daemon.stop()


@pytest.fixture
def outside_store(tmp_path: Path) -> Iterator[EmbeddedStore]:
    """A database the test can reach too (and stop): the daemon gets it as its MongoDB URI."""
    store = EmbeddedStore(tmp_path / "db-state")
    store.start()
    yield store
    if store.process is not None:
        os.killpg(store.process.pid, signal.SIGCONT)
    store.stop()


# --- 10: connection floods and slow clients -----------------------------------------------------

def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_idle_connections_beyond_the_cap_do_not_lock_anyone_out(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "state", args=["--max-connections", "50", "--keepalive-timeout-s", "60"]).start()
    try:
        assert daemon.process is not None
        before, fds_before = database_view(daemon), _open_fds(daemon.process.pid)
        flood = [connect(daemon) for _ in range(400)]  # idle: never a byte
        time.sleep(1.0)
        started = time.monotonic()
        status, _headers, body = get(daemon, "/healthz", timeout_s=5)
        assert status == 200 and json.loads(body)["connections"] <= 50
        assert rpc(daemon, "whoami")["result"]["name"] == "admin"
        assert time.monotonic() - started < 2.0
        assert _open_fds(daemon.process.pid) <= fds_before + 50 + 15
        closed = 0
        for sock in flood:
            sock.settimeout(0.01)
            try:
                closed += sock.recv(1) == b""
            except ConnectionResetError:
                closed += 1
            except TimeoutError:
                pass
            sock.close()
        assert closed >= 400 - 50
        assert database_view(daemon) == before
        assert "closing HTTP connections" in daemon.log()
    finally:
        daemon.stop()


def test_an_idle_keep_alive_connection_is_closed_after_keepalive_timeout_s(slow_clients_daemon: Daemon) -> None:
    with connect(slow_clients_daemon) as sock, connect(slow_clients_daemon) as silent:  # silent: never a byte
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: livedm\r\n\r\n")
        assert read_one_response(sock).startswith(b"HTTP/1.1 200")
        with ThreadPoolExecutor(max_workers=2) as pool:  # both timed at once
            waits = [pool.submit(seconds_until_closed, s, 10) for s in (sock, silent)]
            waited_s, silent_s = (w.result() for w in waits)
    assert 3.0 <= waited_s <= 6.5, waited_s  # keepalive_timeout_s is 4 (request_timeout_s 1.5 plays no part)
    assert 3.0 <= silent_s <= 6.5, silent_s


def test_a_client_trickling_its_headers_is_cut_after_request_timeout_s(slow_clients_daemon: Daemon) -> None:
    with connect(slow_clients_daemon) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: livedm\r\n")
        waited_s = seconds_until_closed(sock, limit_s=10, trickle=b"X-Slow: lorisssss\r\n")
    assert 1.0 <= waited_s <= 3.0, waited_s  # request_timeout_s is 1.5, well before keepalive_timeout_s
    assert get(slow_clients_daemon, "/healthz")[0] == 200


def test_a_client_trickling_its_body_is_cut_and_the_call_never_runs(slow_clients_daemon: Daemon) -> None:
    before = database_view(slow_clients_daemon)
    body = json.dumps({"jsonrpc": "2.0", "method": "create_user", "params": {"name": "slowpoke"}, "id": 1}).encode()
    with connect(slow_clients_daemon) as sock:
        sock.sendall(b"POST /api HTTP/1.1\r\nHost: livedm\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + slow_clients_daemon.token.encode() + b"\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        waited_s = seconds_until_closed(sock, limit_s=10, trickle=body[:-1], every_s=0.3)
    assert 1.0 <= waited_s <= 3.0, waited_s
    assert database_view(slow_clients_daemon) == before
    # a whole request on a keep-alive connection is served as ever, one after the other
    with connect(slow_clients_daemon) as sock:
        for i in range(3):
            if i:
                time.sleep(1.0)  # idle between requests is keep-alive time, not request time
            sock.sendall(b"GET / HTTP/1.1\r\nHost: livedm\r\n\r\n")
            assert read_one_response(sock).startswith(b"HTTP/1.1 200")


# --- 9: batches are capped ---------------------------------------------------------------------

def test_a_batch_over_max_batch_calls_is_refused_whole(slow_clients_daemon: Daemon) -> None:
    before = database_view(slow_clients_daemon)
    batch = [{"jsonrpc": "2.0", "method": "create_user", "params": {"name": f"u{n}"}, "id": n} for n in range(6)]
    status, text = post(slow_clients_daemon, json.dumps(batch))
    reply = strict_json(text)
    assert status == 200 and isinstance(reply, dict) and reply["id"] is None
    assert reply["error"]["code"] == -32600 and reply["error"]["data"]["name"] == "InvalidRequest"
    assert "at most 5 calls (max_batch_calls)" in reply["error"]["message"]
    assert "smaller batches" in reply["error"]["message"]
    assert database_view(slow_clients_daemon) == before
    fine = [{"jsonrpc": "2.0", "method": "whoami", "id": n} for n in range(5)]
    assert [r["result"]["name"] for r in strict_json(post(slow_clients_daemon, json.dumps(fine))[1])] == ["admin"] * 5


# --- 11: a hook run's scoped token -------------------------------------------------------------

def test_a_scoped_hook_token_may_only_read_and_mark_its_own_category(tmp_path: Path,
                                                                    outside_store: EmbeddedStore) -> None:
    tree = build_session_tree(tmp_path / "proj", "S1", exposures=2)
    build_session_tree(tmp_path / "proj", "S2", exposures=1)
    daemon = Daemon(tmp_path / "state", env={"LIVEDM_MONGO_URI": outside_store.uri}).start()
    client: pymongo.MongoClient = pymongo.MongoClient(outside_store.uri)
    try:
        daemon.call("create_project", ["p", str(tree.project_dir)])
        for session in ("S1", "S2"):
            daemon.call("create_live_session", ["P1", session])
            daemon.call("mark_session_completed", ["P1", session])
        token = "ldm_" + "h" * 43
        Store(client, "livedm").insert_token(token_hash(token), "hook", "2026-01-01T00:00:00Z",
                                             expires_at=time.time() + 600,
                                             scope={"project_uid": "P1", "session_uid": "S1", "datatype": "particles"})
        before = database_view(daemon)
        attacks = [
            ("delete_live_datatype", {"project_uid": "P1", "session_uid": "S1", "datatype": "particles"}),
            ("delete_live_datatype", {"project_uid": "P1", "session_uid": "S2", "datatype": "micrographs"}),
            ("register_files", {"project_uid": "P1", "session_uid": "S1", "datatype": "particles",
                                "paths": [str(tree.project_dir / "S2" / "exposures.bson")]}),
            ("create_user", {"name": "mallory", "role": "admin"}),
            ("issue_token", {"user": "admin"}),
            ("set_user_data_management_permission", {"user": "hook", "enabled": True}),
            ("create_project", {"title": "x", "project_dir": str(tmp_path)}),
            ("trigger_live_data_management_script",
             {"project_uid": "P1", "session_uid": "S1", "datatype": "particles"}),
            ("change_session_data_management_state",
             {"project_uid": "P1", "session_uid": "S2", "datatype": "particles", "status": "deleted"}),
            ("change_session_data_management_state",
             {"project_uid": "P1", "session_uid": "S1", "datatype": "micrographs", "status": "deleted"}),
        ]
        for method, params in attacks:
            reply = rpc(daemon, method, params, token=token)
            assert error_code(reply) == -32002, (method, reply)
            assert "hook run for P1/S1/particles" in reply["error"]["message"]
        status, _headers, _body = _get_with_token(daemon, "/admin/backup", token)
        assert status == 403
        assert database_view(daemon) == before
        assert rpc(daemon, "get_datatype_size", ["P1", "S1", "particles"], token=token)["result"] > 0
        marked = rpc(daemon, "change_session_data_management_state", ["P1", "S1", "particles", "archived"], token=token)
        assert marked["result"]["particles"]["status"] == "archived"
    finally:
        client.close()
        daemon.stop()


def _get_with_token(daemon: Daemon, path: str, token: str) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(daemon.url + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


# --- 8, 12: /healthz stays fast and honest ---------------------------------------------------------

def test_healthz_answers_within_a_second_when_the_database_hangs(tmp_path: Path,
                                                                 outside_store: EmbeddedStore) -> None:
    daemon = Daemon(tmp_path / "state", env={"LIVEDM_MONGO_URI": outside_store.uri}).start()
    try:
        assert get(daemon, "/healthz")[0] == 200
        assert outside_store.process is not None
        os.killpg(outside_store.process.pid, signal.SIGSTOP)  # alive, but never answers
        for _ in range(3):
            started = time.monotonic()
            status, _headers, body = get(daemon, "/healthz", timeout_s=10)
            took_s = time.monotonic() - started
            health = json.loads(body)
            assert status == 503 and health["status"] == "failing" and health["database"]["ok"] is False
            assert took_s < 1.6, took_s
            assert any(reason.startswith("database:") for reason in health["reasons"])
        os.killpg(outside_store.process.pid, signal.SIGCONT)
        deadline = time.monotonic() + 15
        while get(daemon, "/healthz")[0] != 200:
            assert time.monotonic() < deadline, "healthz did not recover with the database"
            time.sleep(0.2)
    finally:
        if outside_store.process is not None:
            os.killpg(outside_store.process.pid, signal.SIGCONT)
        daemon.stop()


def test_healthz_fails_with_the_reason_when_the_state_dir_runs_out_of_space(tmp_path: Path,
                                                                           shared_daemon: Daemon) -> None:
    starved = LenientDaemon(tmp_path / "starved", env={"LIVEDM_STATE_MIN_FREE_BYTES": str(10**18)}).start()
    try:
        status, _headers, body = get(starved, "/healthz")
        health = json.loads(body)
        assert status == 503 and health["status"] == "failing" and health["state_dir"]["ok"] is False
        assert health["database"]["ok"] is True
        assert health["state_dir"]["free_bytes"] < 10**18 == health["state_dir"]["min_free_bytes"]
        assert any("state_min_free_bytes" in reason and reason.startswith("state_dir:")
                   for reason in health["reasons"]), health
    finally:
        starved.stop()
    status, _headers, body = get(shared_daemon, "/healthz")  # the control: a livedmd with the default minimum
    assert status == 200 and json.loads(body)["state_dir"]["ok"] is True and json.loads(body)["reasons"] == []


# --- low: hostile JSON, log lines, names, the page's headers ---------------------------------------

@pytest.mark.parametrize("depth", [900, 999, 1000, 5000, 200_000])
def test_json_nested_deeply_is_a_json_rpc_error_not_a_500(slow_clients_daemon: Daemon, depth: int) -> None:
    before = database_view(slow_clients_daemon)
    nested = "[" * depth + "]" * depth
    for body in ('{"jsonrpc": "2.0", "method": "get_project", "params": {"project_uid": ' + nested + '}, "id": 1}',
                 '[{"jsonrpc": "2.0", "method": "whoami", "params": ' + nested + ', "id": 1}]',
                 nested):
        status, text = post(slow_clients_daemon, body)
        assert status == 200, text[:300]
        reply = strict_json(text)
        replies = reply if isinstance(reply, list) else [reply]
        assert all(error_code(r) in (-32700, -32600, -32602) for r in replies), text[:300]
    assert database_view(slow_clients_daemon) == before


@pytest.mark.parametrize("body", [
    '{"jsonrpc": "2.0", "method": "whoami", "id": NaN}',
    '{"jsonrpc": "2.0", "method": "whoami", "id": Infinity}',
    '{"jsonrpc": "2.0", "method": "whoami", "id": -Infinity}',
    '[{"jsonrpc": "2.0", "method": "whoami", "id": NaN}]',
    '{"jsonrpc": "2.0", "method": "get_audit_log", "params": {"limit": NaN}, "id": 1}',
])
def test_nan_and_infinity_are_not_json(slow_clients_daemon: Daemon, body: str) -> None:
    status, text = post(slow_clients_daemon, body)
    reply = strict_json(text)  # the reply itself is JSON: nothing echoed back as NaN
    assert status == 200 and reply["error"]["code"] == -32700 and reply["id"] is None
    assert "NaN" in reply["error"]["message"] or "Infinity" in reply["error"]["message"]


def test_a_lone_surrogate_is_refused_before_the_method_runs(tmp_path: Path, shared_daemon: Daemon) -> None:
    daemon = shared_daemon
    build_session_tree(tmp_path / "proj", exposures=1)
    (tmp_path / "first").mkdir()
    first = daemon.call("create_project", ["first", str(tmp_path / "first")])["uid"]
    before = database_view(daemon)
    for title in ("\\ud800", "ok \\udfff", "\\ude00\\ud83d"):
        body = ('{"jsonrpc": "2.0", "method": "create_project", "params": {"title": "' + title
                + '", "project_dir": ' + json.dumps(str(tmp_path / "proj")) + '}, "id": 1}')
        reply = strict_json(post(daemon, body)[1])
        assert reply["error"]["code"] == -32602 and "surrogate" in reply["error"]["message"], reply
    assert database_view(daemon) == before
    whole = '{"jsonrpc": "2.0", "method": "create_project", "params": ["\\ud83d\\ude00 grid", ' + json.dumps(
        str(tmp_path / "proj")) + '], "id": 1}'  # a proper pair is one character: fine
    made = strict_json(post(daemon, whole)[1])["result"]
    assert made["uid"] == f"P{int(first[1:]) + 1}" and made["title"] == "\U0001F600 grid"  # no uid used up meanwhile
    paths = ('{"jsonrpc": "2.0", "method": "register_files", "params": ["' + made["uid"] + '", "S1", "metadata", '
             '["a", "b\\udc80"]], "id": 2}')
    assert error_code(strict_json(post(daemon, paths)[1])) == -32602


def test_control_characters_cannot_forge_log_lines(tmp_path: Path, shared_daemon: Daemon) -> None:
    daemon = shared_daemon
    forged = "2026-01-01 00:00:00,000 WARNING livedm: admin token rotated by root"
    project_dir = tmp_path / f"grid\n{forged}\r\x1b[2J\u2028x"  # a directory name may hold any of these
    build_session_tree(project_dir, exposures=1)
    logged = len(daemon.log().splitlines())
    uid = daemon.call("create_project", ["p", str(project_dir)])["uid"]  # logged: "created project ..."
    assert error_code(rpc(daemon, f"whoami\n{forged}")) == -32601
    # the log is written by a background thread: wait for the failed call's request line, the last of the two
    lines = wait_until(lambda: (new := daemon.log().splitlines()[logged:]) and any("errors=-32601" in line
                                                                                 for line in new) and new,
                       timeout_s=10, what="the request lines in the log")
    assert not any(line.startswith(forged) for line in lines)
    assert any(f"created project {uid}" in line and "grid\\n2026-01-01" in line and "\\r\\x1b[2J\\u2028x" in line
               for line in lines), daemon.log()


@pytest.mark.parametrize("name", ["x.y\n", "x\ny", "admin\n", "x\t", "x\x00"])
def test_a_user_name_with_a_control_character_is_refused(shared_daemon: Daemon, name: str) -> None:
    daemon = shared_daemon
    before = database_view(daemon)
    assert error_code(rpc(daemon, "create_user", {"name": name})) == -32602
    assert database_view(daemon) == before


def test_the_page_sends_a_tight_content_security_policy_and_no_framing(slow_clients_daemon: Daemon) -> None:
    for path in ("/ui", "/ui/", "/ui/static/app.js", "/ui/static/style.css", "/ui/static/missing.js"):
        _status, headers, _body = get(slow_clients_daemon, path)
        csp = headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src 'self';" in csp and "style-src 'self';" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "frame-ancestors 'none'" in csp
        assert (headers["X-Frame-Options"], headers["X-Content-Type-Options"], headers["Referrer-Policy"]) == (
            "DENY", "nosniff", "no-referrer")


# --- low: the locked-out admin -------------------------------------------------------------------

def test_the_last_admin_token_cannot_be_revoked(daemon: Daemon) -> None:
    before = database_view(daemon)
    reply = rpc(daemon, "revoke_token", {"user": "admin"})
    assert error_code(reply) == -32003 and "issue another admin a token first" in reply["error"]["message"]
    assert database_view(daemon) == before and daemon.call("whoami")["name"] == "admin"
    second = daemon.call("create_user", {"name": "root2", "role": "admin"})["token"]
    assert daemon.call("revoke_token", {"user": "admin"})["revoked"] == 1  # root2 can still sign in
    assert error_code(rpc(daemon, "whoami")) == -32004
    last = rpc(daemon, "revoke_token", {"user": "root2"}, token=second)
    assert error_code(last) == -32003
    assert rpc(daemon, "whoami", token=second)["result"]["name"] == "root2"


def reset_admin_token(state_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "livedmd"), "--state-dir", str(state_dir), "--reset-admin-token"], env=env,
                          capture_output=True, text=True, timeout=60)


def test_reset_admin_token_gives_a_new_token_and_revokes_the_old(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "state").start()
    old = daemon.token
    second = daemon.call("issue_token", {"user": "admin"})["token"]
    busy = reset_admin_token(daemon.state_dir, daemon.env)
    assert busy.returncode == 1 and "in use by livedmd pid" in busy.stderr and "stop it first" in busy.stderr
    assert daemon.token == old and daemon.call("whoami")["name"] == "admin"  # refused while running
    daemon.stop()
    decoy = tmp_path / "decoy"
    decoy.write_text("keep me\n")
    (daemon.state_dir / "admin.token").unlink()
    (daemon.state_dir / "admin.token").symlink_to(decoy)  # a planted link is replaced, never written through
    done = reset_admin_token(daemon.state_dir, daemon.env)
    assert done.returncode == 0, done.stderr
    assert str(daemon.state_dir / "admin.token") in done.stdout and "2 older admin token(s) revoked" in done.stdout
    token_file = daemon.state_dir / "admin.token"
    assert not token_file.is_symlink() and stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert decoy.read_text() == "keep me\n"
    new = daemon.token
    assert new != old and new.startswith("ldm_")
    daemon.start()
    try:
        assert rpc(daemon, "whoami", token=new)["result"] == {"name": "admin", "role": "admin",
                                                               "live_data_management": True}
        for revoked in (old, second):
            assert error_code(rpc(daemon, "whoami", token=revoked)) == -32004
        entry = daemon.call("get_audit_log", {"limit": 1})[0]
        assert entry["action"] == "admin_token_reset" and entry["revoked"] == 2
        assert entry["actor"].startswith("livedmd --reset-admin-token")
    finally:
        daemon.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving the state dir to another uid needs root")
def test_reset_admin_token_refuses_a_state_dir_of_another_user(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    os.chown(state_dir, 65534, 65534)
    done = reset_admin_token(state_dir, {**os.environ, "LIVEDM_DATA_ROOTS": str(tmp_path)})
    assert done.returncode == 1 and "belongs to uid 65534" in done.stderr and "sudo -u" in done.stderr
    assert list(state_dir.iterdir()) == []  # no store started, no token written, no lock file made


# --- 4: no data roots, no start (unless a trial) -----------------------------------------------------

def test_livedmd_refuses_to_start_without_data_roots_unless_a_trial(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEDM_")}
    refused = subprocess.run([str(BIN / "livedmd"), "--state-dir", str(tmp_path / "state"), "--port", "0"], env=env,
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2
    assert "LIVEDM_DATA_ROOTS" in refused.stderr and "--trial" in refused.stderr
    assert not (tmp_path / "state").exists()  # refused before touching anything
    trial = Daemon(tmp_path / "trial", env={"LIVEDM_DATA_ROOTS": ""}, args=["--trial"]).start()
    try:
        assert trial.call("whoami")["name"] == "admin"
        assert "trial mode, no data roots" in trial.log()
    finally:
        trial.stop()


# --- attack pass 2: replies nobody takes, slow requests at the cap, /metrics floods, 1e400 ---------

def connect_not_reading(daemon: Daemon) -> socket.socket:
    """A client that will never read: a tiny receive window, so what the server sends piles up on its side."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # before connecting: it sets the window
    sock.settimeout(10)
    sock.connect(("127.0.0.1", daemon.port))
    return sock


def raw_post(body: bytes, token: str | None = None) -> bytes:
    auth = b"Authorization: Bearer " + token.encode() + b"\r\n" if token else b""
    return (b"POST /api HTTP/1.1\r\nHost: livedm\r\nContent-Type: application/json\r\n" + auth
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def drain(sock: socket.socket, limit_s: float = 5) -> tuple[int, str]:
    """Read what is left until the server closes; the bytes read and how it ended ("eof" or "reset")."""
    sock.settimeout(limit_s)
    total = 0
    try:
        while chunk := sock.recv(65536):
            total += len(chunk)
    except ConnectionResetError:
        return total, "reset"
    return total, "eof"


def healthz_ok(daemon: Daemon, timeout_s: float = 2) -> bool:
    try:
        return get(daemon, "/healthz", timeout_s=timeout_s)[0] == 200
    except OSError:  # refused at the cap: closed at once
        return False


def test_a_json_rpc_id_over_256_characters_is_refused_and_never_echoed(slow_clients_daemon: Daemon) -> None:
    before = database_view(slow_clients_daemon)
    for fine in ("A" * 256, 10**256 - 1, -(10**256 - 1), 1.5e308):
        reply = strict_json(post(slow_clients_daemon, json.dumps({"jsonrpc": "2.0", "method": "whoami",
                                                                  "id": fine}))[1])
        assert reply["id"] == fine and reply["result"]["name"] == "admin"
    batch = [{"jsonrpc": "2.0", "method": "create_user", "params": ["u1"], "id": 1},
             {"jsonrpc": "2.0", "method": "whoami", "id": "A" * 257}]
    for too_long in ({"jsonrpc": "2.0", "method": "whoami", "id": "A" * 257},
                     {"jsonrpc": "2.0", "method": "whoami", "id": 10**256},
                     {"jsonrpc": "2.0", "method": "whoami", "id": "A" * 5_000_000},
                     batch):
        status, text = post(slow_clients_daemon, json.dumps(too_long))
        reply = strict_json(text)
        assert status == 200 and len(text) < 400, text[:400]
        assert reply["error"]["code"] == -32600 and reply["id"] is None
        assert "at most 256 characters" in reply["error"]["message"] and "nothing ran" in reply["error"]["message"]
    # nor is a method name echoed whole
    status, text = post(slow_clients_daemon, json.dumps({"jsonrpc": "2.0", "method": "m" * 5_000_000, "id": 1}))
    assert status == 200 and len(text) < 400 and strict_json(text)["error"]["code"] == -32601
    assert database_view(slow_clients_daemon) == before


def test_sockets_that_never_read_a_reply_to_a_huge_id_lock_no_one_out(tmp_path: Path) -> None:
    """The attack: 8 such sockets held every slot of --max-connections 8 for 40+ s, each a 5 MB echo."""
    daemon = Daemon(tmp_path / "state", args=["--max-connections", "8", "--keepalive-timeout-s", "60"]).start()
    try:
        body = json.dumps({"jsonrpc": "2.0", "method": "whoami", "id": "A" * 5_000_000}).encode()
        attackers = [connect_not_reading(daemon) for _ in range(8)]
        for sock in attackers:
            sock.sendall(raw_post(body))
        time.sleep(1.0)
        started = time.monotonic()
        assert healthz_ok(daemon)
        assert rpc(daemon, "whoami")["result"]["name"] == "admin"
        assert time.monotonic() - started < 2.0
        for sock in attackers:  # each got its whole reply: the short -32600 error, not a 5 MB echo
            sock.settimeout(5)
            head = read_one_response(sock).decode()
            assert head.startswith("HTTP/1.1 200") and "Content-Length: 2" in head and len(head) < 1000
            sock.close()
    finally:
        daemon.stop()


def test_a_reply_the_client_does_not_take_is_cut_after_request_timeout_s(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "state", args=["--max-connections", "3", "--request-timeout-s", "2",
                                              "--keepalive-timeout-s", "60", "--max-batch-calls", "1000"]).start()
    try:
        # about 8 MB of reply: more than the kernel's send buffer takes off livedmd's hands
        batch = json.dumps([{"jsonrpc": "2.0", "method": "system.describe", "id": n} for n in range(1000)])
        started = time.monotonic()
        whole = len(post(daemon, batch, timeout_s=120)[1])  # slow on a loaded machine
        answered_s = time.monotonic() - started
        attackers = [connect_not_reading(daemon) for _ in range(3)]
        for sock in attackers:
            sock.sendall(raw_post(batch.encode(), daemon.token))
        sent_at = time.monotonic()
        time.sleep(answered_s + 0.5)
        assert not healthz_ok(daemon), "every connection is busy writing a reply nobody takes"
        while not healthz_ok(daemon):
            assert time.monotonic() - sent_at < answered_s + 2 + 2.5, "the stalled replies were not cut"
            time.sleep(0.1)
        assert time.monotonic() - sent_at >= 2
        for sock in attackers:
            # on a loaded machine a reply may still be being made when another one's cut frees a slot: its own
            # cut comes request_timeout_s after it begins to be written
            received, ended = drain(sock, limit_s=answered_s + 2 + 5)
            assert received < whole and ended in ("reset", "eof")  # the rest was dropped
            sock.close()
        assert rpc(daemon, "whoami")["result"]["name"] == "admin"
    finally:
        daemon.stop()


SLOW_HEAD = (b"POST /api HTTP/1.1\r\nHost: livedm\r\nContent-Type: application/json\r\n"
             b"Content-Length: 100000\r\n\r\n")


def test_at_the_cap_the_slowest_request_still_arriving_is_pushed_out(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "state", args=["--max-connections", "2"]).start()
    try:
        steady, stalled = connect(daemon), connect(daemon)
        steady.sendall(SLOW_HEAD)
        stalled.sendall(SLOW_HEAD)  # and then nothing
        for _ in range(8):  # 0.8 s, beyond the 0.25 s grace: the steady one sends 100 bytes every 0.1 s
            steady.sendall(b" " * 100)
            time.sleep(0.1)
        assert healthz_ok(daemon)  # a third connection at the cap of 2: one of them had to go
        stalled.settimeout(2)
        assert stalled.recv(1) == b""  # the stalled one went
        steady.sendall(b" " * 100)
        steady.settimeout(0.3)
        with pytest.raises(TimeoutError):
            steady.recv(1)  # the steady one is still being read
        steady.close()
        stalled.close()
    finally:
        daemon.stop()


SLOW_REQUEST_FLOOD = """
import asyncio, sys, threading, time
port, sockets, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
head = (b"POST /api HTTP/1.1\\r\\nHost: livedm\\r\\nContent-Type: application/json\\r\\n"
        b"Content-Length: 100000\\r\\n\\r\\n")
connections = 0

async def one():
    global connections
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            continue
        connections += 1
        try:
            writer.write(head)
            while time.monotonic() < end:
                try:
                    if await asyncio.wait_for(reader.read(1), 5) == b"":
                        break
                except TimeoutError:
                    writer.write(b" ")
        except OSError:
            pass
        writer.close()

async def main():
    loop = asyncio.get_running_loop()
    told = loop.create_future()  # done when stdin is closed: the flood stops early

    def wait_for_eof():
        sys.stdin.read()
        loop.call_soon_threadsafe(lambda: told.done() or told.set_result(None))

    threading.Thread(target=wait_for_eof, daemon=True).start()
    flood = asyncio.gather(*(one() for _ in range(sockets)))
    await asyncio.wait([flood, told], return_when=asyncio.FIRST_COMPLETED)
    flood.cancel()
    await asyncio.gather(flood, return_exceptions=True)

asyncio.run(main())
print(connections, flush=True)
"""


def test_a_flood_of_slow_requests_at_the_cap_does_not_lock_anyone_out(tmp_path: Path) -> None:
    """The attack: sockets over the cap, each sending headers announcing 100000 bytes and then 1 byte every 5 s,
    reconnecting at once when cut, made most /healthz calls fail: every connection was handling a request
    whose body trickled in, and a new one found none to push out."""
    daemon = Daemon(tmp_path / "state", args=["--max-connections", "64"]).start()
    try:
        flood = subprocess.Popen([sys.executable, "-c", SLOW_REQUEST_FLOOD, str(daemon.port), "96", "10"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        time.sleep(2.0)
        outcomes = []
        while len(outcomes) < 30:
            started = time.monotonic()
            outcomes.append(healthz_ok(daemon))
            time.sleep(max(0.0, 0.2 - (time.monotonic() - started)))
        assert flood.poll() is None, "the flood lasted the whole measurement"
        connections = int(flood.communicate(timeout=30)[0])  # closes its stdin: it stops now
        assert connections > 1000  # the flood churned: it was cut and reconnected all along
        assert outcomes.count(False) <= 2, outcomes
    finally:
        daemon.stop()


def _metrics_value(daemon: Daemon, name: str) -> float:
    _status, _headers, body = get(daemon, "/metrics")
    return next((float(line.split()[-1]) for line in body.splitlines() if line.startswith(name + " ")), 0.0)


def test_a_metrics_flood_costs_one_render_a_second_and_api_calls_stay_fast(shared_daemon: Daemon) -> None:
    """The attack: 300 loops of GET /metrics took every thread of the shared pool; whoami took ~20 s."""
    daemon = shared_daemon
    renders_before = _metrics_value(daemon, "livedm_metrics_renders_total")
    flood_s = 4.0
    stop_at = time.monotonic() + flood_s

    def scrape_until_stopped() -> int:
        done = 0
        while time.monotonic() < stop_at:
            status, _headers, body = get(daemon, "/metrics", timeout_s=30)
            assert status == 200 and "livedm_jobs" in body
            done += 1
        return done

    with ThreadPoolExecutor(max_workers=100) as pool:
        scrapes = [pool.submit(scrape_until_stopped) for _ in range(100)]
        slowest_s = 0.0
        while time.monotonic() < stop_at:
            started = time.monotonic()
            assert rpc(daemon, "whoami")["result"]["name"] == "admin"
            slowest_s = max(slowest_s, time.monotonic() - started)
            time.sleep(0.1)
        scraped = sum(future.result() for future in scrapes)
    assert slowest_s < 1.0, slowest_s  # (before: 6 s with 100 scraping loops)
    time.sleep(1.1)  # past the reuse: the next scrape renders anew and counts itself
    renders = _metrics_value(daemon, "livedm_metrics_renders_total") - renders_before
    assert scraped >= 500 and 1 <= renders <= flood_s + 3, (scraped, renders)


@pytest.mark.parametrize("number", ["1e400", "-1e400", "1E999", "2e308"])
def test_a_number_too_large_for_a_float_is_a_parse_error(slow_clients_daemon: Daemon, number: str) -> None:
    for body in ('{"jsonrpc": "2.0", "method": "whoami", "id": ' + number + "}",
                 '[{"jsonrpc": "2.0", "method": "whoami", "id": ' + number + "}]",
                 '{"jsonrpc": "2.0", "method": "get_audit_log", "params": {"limit": ' + number + '}, "id": 1}'):
        status, text = post(slow_clients_daemon, body)
        reply = strict_json(text)  # no "Infinity" in the reply
        assert status == 200 and reply["error"]["code"] == -32700 and reply["id"] is None
        assert f"the number {number!r} is out of range" in reply["error"]["message"]
    assert strict_json(post(slow_clients_daemon, '{"jsonrpc": "2.0", "method": "whoami", "id": 1e308}')[1])[
        "id"] == 1e308
