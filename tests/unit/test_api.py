"""The JSON-RPC surface over HTTP (aiohttp test server, mongomock): shapes, auth and hostile input."""

from __future__ import annotations

import asyncio
import inspect
import json
from pathlib import Path
from typing import Any

import pytest

from livedm.server.methods import METHODS
from livedm.server.params import matches
from tests.support.api import Api, assert_error


async def test_greeting_and_health(api: Api) -> None:
    response = await api.client.get("/")
    assert response.status == 200 and "livedm" in await response.text()
    health = await (await api.client.get("/healthz")).json()
    assert health["status"] == "ok" and health["database"]["ok"] is True


async def test_system_describe_lists_every_method_as_cryosparc_tools_expects(api: Api) -> None:
    described = await api.ok("system.describe", [])
    assert {p["name"] for p in described["procs"]} == set(METHODS)
    sizes = next(p for p in described["procs"] if p["name"] == "get_datatype_size")
    assert [p["name"] for p in sizes["params"]] == ["project_uid", "session_uid", "datatype"]


async def test_named_positional_and_batch_calls(populated: Api) -> None:
    named = await populated.ok("get_datatype_size", {"project_uid": "P1", "session_uid": "S1", "datatype": "raw"})
    positional = await populated.ok("get_datatype_size", ["P1", "S1", "raw"])
    assert named == positional > 0
    batch = await populated.post([
        {"jsonrpc": "2.0", "method": "get_datatype_size", "params": ["P1", "S1", "raw"], "id": 1},
        {"jsonrpc": "2.0", "method": "get_project", "params": ["P9"], "id": 2},
        {"jsonrpc": "2.0", "method": "list_projects", "id": 3},
        {"jsonrpc": "2.0", "method": "list_projects"},  # a notification: no answer
    ])
    by_id = {r["id"]: r for r in batch}
    assert set(by_id) == {1, 2, 3}
    assert by_id[1]["result"] == named
    assert_error(by_id[2], -32001, "NotFound")
    assert by_id[3]["result"][0]["uid"] == "P1"


async def test_authentication(populated: Api) -> None:
    assert_error(await populated.call("list_projects", token=None), -32004, "Unauthenticated")
    assert_error(await populated.call("list_projects", token="ldm_wrong"), -32004, "Unauthenticated")
    response = await populated.client.post("/api", headers={"License-ID": populated.token}, data=json.dumps(
        {"jsonrpc": "2.0", "method": "list_projects", "id": 1}))
    assert (await response.json())["result"][0]["uid"] == "P1"


@pytest.mark.parametrize("body, code, name", [
    ("{not json", -32700, "ParseError"),
    ("42", -32600, "InvalidRequest"),
    ('"a string"', -32600, "InvalidRequest"),
    ("[]", -32600, "InvalidRequest"),
    ('{"jsonrpc": "1.0", "method": "list_projects", "id": 1}', -32600, "InvalidRequest"),
    ('{"jsonrpc": "2.0", "params": [], "id": 1}', -32600, "InvalidRequest"),
    ('{"jsonrpc": "2.0", "method": 5, "id": 1}', -32600, "InvalidRequest"),
    ('{"jsonrpc": "2.0", "method": "list_projects", "params": "P1", "id": 1}', -32600, "InvalidRequest"),
    ('{"jsonrpc": "2.0", "method": "drop_database", "id": 1}', -32601, "MethodNotFound"),
    ('{"jsonrpc": "2.0", "method": "__init__", "id": 1}', -32601, "MethodNotFound"),
])
async def test_malformed_requests(populated: Api, body: str, code: int, name: str) -> None:
    before = populated.snapshot()
    assert_error(await populated.post(body, raw=True), code, name)
    assert populated.snapshot() == before


async def test_non_utf8_and_oversized_bodies(populated: Api) -> None:
    before = populated.snapshot()
    assert_error(await populated.post(b"\xff\xfe{}", raw=True), -32700, "ParseError")
    huge = json.dumps({"jsonrpc": "2.0", "method": "register_files", "id": 1, "params": {
        "project_uid": "P1", "session_uid": "S1", "datatype": "metadata", "paths": ["x" * 1000] * 10_000}})
    assert len(huge) > 10_000_000
    error = assert_error(await populated.post(huge, raw=True), -32600, "InvalidRequest")
    assert "larger than" in error["message"]
    assert populated.snapshot() == before


def _valid_params(tmp_path: Path) -> dict[str, Any]:
    return {"project_uid": "P1", "session_uid": "S1", "datatype": "metadata", "title": "t",
            "project_dir": str(tmp_path / "proj"), "session_dir": "S9",
            "paths": [str(tmp_path / "proj" / "S1" / "exposures.bson")], "status": "archived",
            "name": "newuser", "role": "user", "user": "admin", "enabled": True, "limit": 10,
            "filepaths_to_delete": None, "user_id": None, "asynchronous": True, "dry_run": True, "job_id": "J1",
            "kind": None, "state": None, "script_location": None, "script_log_path_abs": None,
            "confirm_digest": None, "offset": None, "full": False, "search": "p", "session_status": None,
            "category_status": None, "expand": True, "collapse": None, "page": 1, "page_size": None}


def _wrong_value(hint: Any) -> Any:
    """A JSON value the parameter's type refuses."""
    return next(value for value in ("not-a-list", "yes", "ten", 12345, {"an": "object"}) if not matches(value, hint))


HOSTILE_CASES = []
for _name, _method in METHODS.items():
    _params = list(_method.signature.parameters.values())[1:]
    HOSTILE_CASES.append((_name, "extra", None))
    for _p in _params:
        if _p.default is inspect.Parameter.empty:
            HOSTILE_CASES.append((_name, "missing", _p.name))
        HOSTILE_CASES.append((_name, "wrong-type", _p.name))


@pytest.mark.parametrize("method, case, param", HOSTILE_CASES)
async def test_every_method_refuses_missing_extra_and_wrong_typed_arguments(
        populated: Api, tmp_path: Path, method: str, case: str, param: str | None) -> None:
    spec = METHODS[method]
    sample = _valid_params(tmp_path)
    params = {p: sample[p] for p in list(spec.signature.parameters)[1:]}
    if case == "extra":
        params["bogus"] = 1
    elif case == "missing":
        del params[param]
    else:
        params[param] = _wrong_value(spec.hints[param])
    before = populated.snapshot()
    error = assert_error(await populated.call(method, params), -32602, "InvalidParams")
    if case == "wrong-type":
        assert param in error["message"]
    assert populated.snapshot() == before


@pytest.mark.parametrize("method, params, code", [
    ("get_project", ["P404"], -32001),
    ("get_session", ["P1", "S404"], -32001),
    ("get_datatype_size", ["P404", "S1", "raw"], -32001),
    ("get_datatype_size", ["P1", "S1", "movies"], -32602),
    ("get_datatype_size", ["P1", "S1", "RAW"], -32602),
    ("get_datatype_file_paths", ["P1", "S1", "thumbnails"], -32602),
    ("get_session", ["P1", "S1' || '1'=='1"], -32602),
    ("get_session", [{"$ne": None}, "S1"], -32602),
    ("create_project", ["t", "relative/path"], -32602),
    ("create_project", ["t", "/nonexistent/dir"], -32602),
    ("create_live_session", ["P1", "t", "../../etc"], -32602),
    ("create_live_session", ["P1", "t", "/abs"], -32602),
    ("start_session", ["P1", "S404"], -32001),
    ("register_files", ["P1", "S1", "metadata", ["/etc/passwd"]], -32602),
    ("register_files", ["P1", "S1", "metadata", ["../../etc/passwd"]], -32602),
    ("register_files", ["P1", "S1", "metadata", ["S1/\x00evil"]], -32602),
])
async def test_unknown_uids_and_bad_values_change_nothing(
        populated: Api, method: str, params: list, code: int) -> None:
    before = populated.snapshot()
    assert (await populated.call(method, params))["error"]["code"] == code
    assert populated.snapshot() == before


async def test_register_files_outside_project_is_refused_as_a_whole(populated: Api, tmp_path: Path) -> None:
    inside = tmp_path / "proj" / "S1" / "notes.txt"
    inside.write_text("n")
    (tmp_path / "secret").write_text("s")
    before = populated.snapshot()
    reply = await populated.call("register_files", ["P1", "S1", "metadata", [str(inside), str(tmp_path / "secret")]])
    assert "outside the project" in assert_error(reply, -32602, "InvalidParams")["message"]
    assert populated.snapshot() == before


async def test_a_single_notification_gets_no_body_and_null_id_is_a_request(populated: Api) -> None:
    headers = {"Authorization": f"Bearer {populated.token}"}
    response = await populated.client.post("/api", headers=headers, data=json.dumps(
        {"jsonrpc": "2.0", "method": "list_projects"}))
    assert response.status == 204 and await response.read() == b""
    reply = await populated.post({"jsonrpc": "2.0", "method": "list_projects", "id": None})
    assert reply["id"] is None and reply["result"][0]["uid"] == "P1"


async def test_a_background_refresh_of_one_session_measures_only_it(populated: Api, tmp_path: Path) -> None:
    await populated.ok("create_live_session", ["P1", "other"])
    (tmp_path / "proj" / "S2").mkdir()
    job_id = await populated.ok("update_all_sessions_datatype_sizes", {"project_uid": "P1", "session_uid": "S1"})
    for _ in range(200):
        job = await populated.ok("get_job", [job_id])
        if job["state"] in ("done", "failed"):
            break
        await asyncio.sleep(0.05)
    assert job["state"] == "done" and list(job["result"]) == ["S1"]
    assert job["params"] == {"project_uid": "P1", "session_uid": "S1"}
    assert (await populated.ok("get_session", ["P1", "S2"]))["measured_at"] is None
    assert_error(await populated.call("update_all_sessions_datatype_sizes", ["P1", "S9"]), -32001, "NotFound")
