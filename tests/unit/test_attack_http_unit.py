"""The HTTP side's guards in-process (aiohttp test server on mongomock): every method under a scoped hook
token, the last admin's token, strict JSON, lone surrogates, log escaping and user names."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from livedm.server import connections, observe
from livedm.server.auth import token_hash
from livedm.server.connections import ConnectionGuard, GuardedProtocol
from livedm.server.domain import now_iso
from livedm.server.errors import ApiError
from livedm.server.methods import METHODS
from livedm.server.observe import JsonFormatter, Metrics, PlainFormatter, escape_controls
from livedm.server.rpc import SCOPED_READS, parse_json
from livedm.server.store import Store
from livedm.server.users import _USER_NAME
from tests.support.api import Api, assert_error

SCOPE = {"project_uid": "P1", "session_uid": "S1", "datatype": "micrographs"}
HOOK_TOKEN = "ldm_" + "s" * 43

# What a token scoped to P1/S1/micrographs gets, method by method. A method added to the API without a
# line here fails test_the_table_names_every_method: someone has to decide.
READ, OWN_CATEGORY, FORBIDDEN = "read", "own category", "forbidden"
EXPECTED = {
    "system.describe": READ, "whoami": READ, "list_projects": READ, "get_overview": READ, "get_project": READ,
    "list_sessions": READ, "get_session": READ, "get_datatype_file_paths": READ, "get_datatype_size": READ,
    "get_data_management_stats": READ, "get_project_file_paths": READ, "get_audit_log": READ, "get_job": READ,
    "list_jobs": READ, "get_discovery_report": READ, "get_all_sessions_in_project": READ,
    "change_session_data_management_state": OWN_CATEGORY,
    "create_project": FORBIDDEN, "create_live_session": FORBIDDEN, "start_session": FORBIDDEN,
    "pause_session": FORBIDDEN, "mark_session_completed": FORBIDDEN, "register_files": FORBIDDEN,
    "scan_session": FORBIDDEN, "update_session_datatype_sizes": FORBIDDEN,
    "update_all_sessions_datatype_sizes": FORBIDDEN, "delete_live_datatype": FORBIDDEN,
    "trigger_live_data_management_script": FORBIDDEN, "discover": FORBIDDEN, "create_user": FORBIDDEN,
    "list_users": FORBIDDEN,
    "issue_token": FORBIDDEN, "revoke_token": FORBIDDEN, "set_user_data_management_permission": FORBIDDEN,
    "remove_user": FORBIDDEN, "set_user_role": FORBIDDEN, "get_job_log": FORBIDDEN,
}


def test_the_table_names_every_method() -> None:
    assert set(EXPECTED) == set(METHODS)
    assert {m for m, e in EXPECTED.items() if e == READ} == SCOPED_READS


def _params(method: str, tmp_path: Path, job_id: str) -> dict[str, Any]:
    sample = {"project_uid": "P1", "session_uid": "S1", "datatype": "micrographs", "status": "archived",
              "title": "t", "project_dir": str(tmp_path / "proj"), "session_dir": "S7",
              "paths": [str(tmp_path / "proj" / "S1" / "exposures.bson")], "name": "mallory", "role": "admin",
              "user": "admin", "enabled": True, "limit": 10, "filepaths_to_delete": None, "user_id": None,
              "asynchronous": True, "dry_run": False, "job_id": job_id, "kind": None, "state": None,
              "script_location": None, "script_log_path_abs": None}
    return {p: sample[p] for p in METHODS[method].param_names if p in sample}


@pytest.fixture
async def scoped(populated: Api) -> tuple[Api, str]:
    await populated.ok("mark_session_completed", ["P1", "S1"])
    job_id = await populated.ok("update_all_sessions_datatype_sizes", ["P1"])
    while (await populated.ok("get_job", [job_id]))["state"] not in ("done", "failed"):
        await asyncio.sleep(0.02)
    Store(populated.mongo, "livedm").insert_token(token_hash(HOOK_TOKEN), "hook", now_iso(),
                                                  expires_at=time.time() + 600, scope=SCOPE)
    return populated, job_id


@pytest.mark.parametrize("method", sorted(METHODS))
async def test_a_scoped_token_gets_exactly_what_the_table_says(scoped: tuple[Api, str], tmp_path: Path,
                                                               method: str) -> None:
    api, job_id = scoped
    before = api.snapshot()
    reply = await api.call(method, _params(method, tmp_path, job_id), token=HOOK_TOKEN)
    if EXPECTED[method] == FORBIDDEN:
        error = assert_error(reply, -32002, "Forbidden")
        assert "hook run for P1/S1/micrographs" in error["message"] and "user's own token" in error["message"]
        assert api.snapshot() == before
    else:
        assert "error" not in reply, reply


@pytest.mark.parametrize("elsewhere", [{"datatype": "particles"}, {"session_uid": "S2"}, {"project_uid": "P2"}])
async def test_a_scoped_token_marks_no_other_category(scoped: tuple[Api, str], elsewhere: dict[str, str]) -> None:
    api, _job_id = scoped
    before = api.snapshot()
    params = {**SCOPE, "status": "deleted", **elsewhere}
    assert_error(await api.call("change_session_data_management_state", params, token=HOOK_TOKEN),
                 -32002, "Forbidden")
    positional = [params["project_uid"], params["session_uid"], params["datatype"], "deleted"]
    assert_error(await api.call("change_session_data_management_state", positional, token=HOOK_TOKEN),
                 -32002, "Forbidden")
    assert api.snapshot() == before
    marked = await api.call("change_session_data_management_state", [*SCOPE.values(), "archiving"], token=HOOK_TOKEN)
    assert marked["result"]["micrographs"]["status"] == "archiving"


async def test_a_scoped_token_is_no_admin_for_backup_either(scoped: tuple[Api, str]) -> None:
    api, _job_id = scoped
    Store(api.mongo, "livedm").update_user("hook", {"role": "admin"})  # even were the hook user an admin
    response = await api.client.get("/admin/backup", headers={"Authorization": f"Bearer {HOOK_TOKEN}"})
    assert response.status == 403


async def test_a_malformed_scope_allows_reads_only(populated: Api) -> None:
    Store(populated.mongo, "livedm").insert_token(token_hash(HOOK_TOKEN), "hook", now_iso(), scope={"x": 1})
    await populated.ok("mark_session_completed", ["P1", "S1"])
    assert "error" not in await populated.call("list_projects", token=HOOK_TOKEN)
    assert_error(await populated.call("change_session_data_management_state", ["P1", "S1", "micrographs", "archived"],
                                      token=HOOK_TOKEN), -32002, "Forbidden")


# --- the last admin -------------------------------------------------------------------------------

async def test_revoking_the_last_admins_tokens_is_a_conflict(populated: Api) -> None:
    before = populated.snapshot()
    error = assert_error(await populated.call("revoke_token", ["admin"]), -32003, "Conflict")
    assert "issue another admin a token first" in error["message"] and "--reset-admin-token" in error["message"]
    assert populated.snapshot() == before
    user = (await populated.ok("create_user", ["plain"]))["token"]
    assert (await populated.ok("revoke_token", ["plain"]))["revoked"] == 1  # a user's: fine
    assert_error(await populated.call("whoami", token=user), -32004, "Unauthenticated")
    # an expired or hook-scoped admin token does not count as a way in
    store = Store(populated.mongo, "livedm")
    await populated.ok("create_user", {"name": "second", "role": "admin"})
    store.delete_tokens("second")
    store.insert_token(token_hash("ldm_" + "e" * 43), "second", now_iso(), expires_at=time.time() - 1)
    store.insert_token(token_hash("ldm_" + "f" * 43), "second", now_iso(), scope=SCOPE)
    assert_error(await populated.call("revoke_token", ["admin"]), -32003, "Conflict")
    issued = (await populated.ok("issue_token", ["second"]))["token"]
    assert (await populated.ok("revoke_token", ["admin"]))["revoked"] == 1
    assert (await populated.call("whoami", token=issued))["result"]["name"] == "second"


# --- strict JSON, batches, surrogates ------------------------------------------------------------

@pytest.mark.parametrize("body", ["NaN", "[Infinity]", '{"id": -Infinity}', "[" * 100_000, "{" * 3000])
def test_parse_json_refuses_what_is_not_json(body: str) -> None:
    with pytest.raises(Exception) as raised:
        parse_json(body)
    assert getattr(raised.value, "code", None) == -32700


async def test_a_batch_one_over_the_cap_runs_nothing(populated: Api) -> None:
    before = populated.snapshot()
    batch = [{"jsonrpc": "2.0", "method": "create_user", "params": [f"u{n}"], "id": n} for n in range(101)]
    error = assert_error(await populated.post(batch), -32600, "InvalidRequest")
    assert "at most 100 calls" in error["message"] and "101" in error["message"]
    assert populated.snapshot() == before
    replies = await populated.post(batch[:100])
    assert len(replies) == 100 and all("result" in r for r in replies)


async def test_a_lone_surrogate_anywhere_is_invalid_params_and_uses_no_uid(populated: Api, tmp_path: Path) -> None:
    before = populated.snapshot()
    project_dir = json.dumps(str(tmp_path / "proj"))
    for body in ['{"jsonrpc": "2.0", "method": "create_project", "params": ["\\ud800", ' + project_dir + '], "id": 1}',
                 '{"jsonrpc": "2.0", "method": "create_live_session", "params": {"project_uid": "P1", '
                 '"title": "x\\uDBFF"}, "id": 1}',
                 '{"jsonrpc": "2.0", "method": "delete_live_datatype", "params": ["P1", "S1", "metadata", '
                 '{"metadata": ["\\udc00"]}], "id": 1}',
                 '[{"jsonrpc": "2.0", "method": "create_user", "params": ["\\ud800x"], "id": 1}]']:
        reply = await populated.post(body, raw=True)
        reply = reply[0] if isinstance(reply, list) else reply
        assert "surrogate" in assert_error(reply, -32602, "InvalidParams")["message"]
    assert populated.snapshot() == before
    (tmp_path / "other").mkdir()
    assert (await populated.ok("create_project", ["second", str(tmp_path / "other")]))["uid"] == "P2"


# --- log lines and user names ---------------------------------------------------------------------

def _formatted(formatter: logging.Formatter, message: str, *args: Any) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    record = logging.LogRecord("livedm.test", logging.INFO, __file__, 1, message, args, None)
    handler.emit(record)
    return stream.getvalue()


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\x1b[31mb", "a\u2028b", "a\u0085b", "a\x00b", "a\ud800b"])
def test_a_logged_value_never_starts_a_line(value: str) -> None:
    plain = _formatted(PlainFormatter("%(levelname)s %(message)s"), "title %s", value)
    assert plain.count("\n") == 1 and plain.endswith("\n") and plain.startswith("INFO title a\\")
    as_json = _formatted(JsonFormatter(), "title %s", value)
    assert as_json.count("\n") == 1 and json.loads(as_json)["message"].startswith("title a\\")
    assert escape_controls("plain text, é, 中文") == "plain text, é, 中文"


@pytest.mark.parametrize("name, valid", [("x.y", True), ("_svc-1", True), ("x.y\n", False), ("x\ny", False),
                                         ("Bad", False), ("x" * 65, False), ("x ", False)])
async def test_user_names_are_matched_whole(api: Api, name: str, valid: bool) -> None:
    assert bool(_USER_NAME.fullmatch(name)) is valid
    reply = await api.call("create_user", {"name": name})
    assert ("error" not in reply) is valid, reply


# --- attack pass 2: numbers that overflow, long ids, the connection guard's choices, /metrics renders ----

@pytest.mark.parametrize("body", ["1e400", "[-1e400]", '{"id": 2E308}', '{"a": [1, {"b": 1e999}]}'])
def test_parse_json_refuses_a_number_that_overflows_to_infinity(body: str) -> None:
    with pytest.raises(ApiError) as raised:
        parse_json(body)
    assert raised.value.code == -32700 and "is out of range" in raised.value.message
    assert parse_json("[1e308, -1e308, 1e-400]") == [1e308, -1e308, 0.0]


async def test_an_id_over_256_characters_refuses_the_whole_request(populated: Api) -> None:
    before = populated.snapshot()
    assert (await populated.post({"jsonrpc": "2.0", "method": "whoami", "id": "x" * 256}))["id"] == "x" * 256
    for too_long in ({"jsonrpc": "2.0", "method": "whoami", "id": "x" * 257},
                     {"jsonrpc": "2.0", "method": "whoami", "id": -(10**256)},
                     [{"jsonrpc": "2.0", "method": "create_user", "params": ["u1"], "id": 1},
                      {"jsonrpc": "2.0", "method": "create_user", "params": ["u2"], "id": "x" * 257}]):
        reply = await populated.post(too_long)
        error = assert_error(reply, -32600, "InvalidRequest")
        assert reply["id"] is None and "at most 256 characters" in error["message"]
    assert populated.snapshot() == before


class _Transport:
    def __init__(self) -> None:
        self.closed = self.aborted = False

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    clock = _Clock()
    monkeypatch.setattr(connections, "_now", clock)
    return clock


def _open(guard: ConnectionGuard) -> tuple[GuardedProtocol, _Transport]:
    connection = GuardedProtocol(guard, asyncio.Protocol)
    transport = _Transport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    return connection, transport


async def test_at_the_cap_the_order_is_idle_then_slowest_arriving_then_just_opened(clock: _Clock) -> None:
    guard = ConnectionGuard(max_connections=4, request_timeout_s=30)
    (fast, fast_t), (slow, slow_t), (_new, new_t), (busy, busy_t) = (_open(guard) for _ in range(4))
    fast.data_received(b"P" * 100)
    slow.data_received(b"P" * 100)
    busy.data_received(b"GET / HTTP/1.1\r\n\r\n")
    busy.request_started()
    busy.received()
    clock.now += 2.0
    fast.data_received(b"x" * 5000)  # 5100 bytes in 2 s against the slow one's 100
    clock.now += 0.1
    _again, new_again_t = _open(guard)  # `_new` sent nothing yet, but its 2.1 s are past the grace: it goes
    assert new_t.closed and not (fast_t.closed or slow_t.closed or busy_t.closed)
    _open(guard)  # the newest is in its grace: the slowest request arriving goes
    assert slow_t.closed and not (fast_t.closed or new_again_t.closed)
    _open(guard)  # then the fast one, rather than a connection that only just opened
    assert fast_t.closed and not new_again_t.closed
    _third, third_t = _open(guard)  # only just opened ones left but for the busy one: the longest idle goes
    assert new_again_t.closed and not (third_t.closed or busy_t.closed)
    assert guard.open_connections == 4


async def test_when_every_connection_is_busy_the_new_one_is_closed_at_once(clock: _Clock) -> None:
    guard = ConnectionGuard(max_connections=2, request_timeout_s=30)
    for connection, _transport in (_open(guard), _open(guard)):
        connection.data_received(b"GET / HTTP/1.1\r\n\r\n")
        connection.request_started()
        connection.received()
    clock.now += 60
    _refused, refused_t = _open(guard)
    assert refused_t.aborted and guard.open_connections == 2


async def test_a_response_the_client_takes_none_of_is_aborted_after_request_timeout_s() -> None:
    guard = ConnectionGuard(max_connections=4, request_timeout_s=0.05)
    taken, taken_t = _open(guard)
    stuck, stuck_t = _open(guard)
    for connection in (taken, stuck):
        connection.pause_writing()  # the send buffer is full
    await asyncio.sleep(0.03)
    taken.resume_writing()
    await asyncio.sleep(0.05)
    assert stuck_t.aborted and not taken_t.aborted


async def test_concurrent_scrapes_share_one_render_reused_for_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = Metrics()
    renders = 0

    def render() -> bytes:
        nonlocal renders
        renders += 1
        time.sleep(0.05)
        return f"render {renders}".encode()

    monkeypatch.setattr(metrics, "render", render)
    bodies = await asyncio.gather(*(metrics.render_shared() for _ in range(200)))
    assert renders == 1 and set(bodies) == {b"render 1"}
    assert await metrics.render_shared() == b"render 1"  # within RENDER_REUSE_S: no new render
    monkeypatch.setattr(observe, "RENDER_REUSE_S", 0.0)
    waiter = asyncio.ensure_future(metrics.render_shared())
    other = asyncio.ensure_future(metrics.render_shared())
    await asyncio.sleep(0.01)
    waiter.cancel()  # a scraper that goes away does not cancel the render the others wait for
    assert await other == b"render 2" and renders == 2


async def test_a_failed_render_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = Metrics()
    outcomes = iter([RuntimeError("the database did not answer"), b"fine"])

    def render() -> bytes:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(metrics, "render", render)
    with pytest.raises(RuntimeError):
        await metrics.render_shared()
    assert await metrics.render_shared() == b"fine"
