"""Users, tokens and the live data management permission, through the API (mongomock)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from livedm.server.methods import METHODS
from tests.support.api import Api, assert_error

MANAGE = sorted(name for name, m in METHODS.items() if m.access == "manage")
# What a permitted call gives with _params_for's arguments: a result (None) or the one error it must be.
PERMITTED_OUTCOME: dict[str, int | None] = {
    "create_project": None,
    "discover": None,  # a dry run
    "register_files": None,
    "change_session_data_management_state": None,
    "delete_live_datatype": None,  # the job id
    "trigger_live_data_management_script": -32003,  # the hook is not enabled in these tests
    "get_job_log": -32001,  # there is no job J1 (a read, but a log holds paths: it needs the permission)
}
ADMIN = sorted(name for name, m in METHODS.items() if m.access == "admin")


async def make_user(api: Api, name: str, role: str = "user") -> str:
    return (await api.ok("create_user", {"name": name, "role": role}))["token"]


@pytest.fixture
async def completed(populated: Api) -> Api:
    await populated.ok("mark_session_completed", ["P1", "S1"])
    return populated


def _params_for(method: str, tmp_path: Path | None = None) -> dict[str, Any]:
    base = tmp_path or Path("/nonexistent")
    sample = {"project_uid": "P1", "session_uid": "S1", "datatype": "micrographs", "status": "archiving",
              "name": "someone", "role": "user", "user": "admin", "enabled": False, "dry_run": True,
              "title": "another", "project_dir": str(base / "another"),
              "paths": [str(base / "proj" / "shared_gain.mrc")], "job_id": "J1"}
    params = {p: sample[p] for p in METHODS[method].param_names if p in sample}
    if method == "delete_live_datatype":
        params["dry_run"] = False  # the deletion itself: its dry run is a read (test_a_delete_dry_run_is_a_read)
    return params


def test_every_method_that_needs_the_permission_has_its_expected_outcome() -> None:
    assert sorted(PERMITTED_OUTCOME) == MANAGE


@pytest.mark.parametrize("method", MANAGE)
async def test_modifying_methods_need_the_permission(completed: Api, method: str, tmp_path: Path) -> None:
    (tmp_path / "another").mkdir()
    (tmp_path / "proj" / "shared_gain.mrc").write_bytes(b"gain")
    token = await make_user(completed, "alice")
    before = completed.snapshot()
    error = assert_error(await completed.call(method, _params_for(method, tmp_path), token=token), -32002, "Forbidden")
    assert "live data management permission" in error["message"]
    assert completed.snapshot() == before
    await completed.ok("set_user_data_management_permission", {"user": "alice", "enabled": True})
    allowed = await completed.call(method, _params_for(method, tmp_path), token=token)
    expected_error = PERMITTED_OUTCOME[method]
    if expected_error is None:
        assert "result" in allowed, allowed
    else:
        assert allowed["error"]["code"] == expected_error, allowed
    await completed.ok("set_user_data_management_permission", ["alice", False])
    assert_error(await completed.call(method, _params_for(method, tmp_path), token=token), -32002, "Forbidden")
    changes = [e for e in await completed.ok("get_audit_log", {}) if e["action"] == "permission_changed"]
    assert [(e["user"], e["live_data_management"], e["actor"]) for e in changes] == [
        ("alice", False, "admin"), ("alice", True, "admin")]


async def test_a_delete_dry_run_is_a_read(completed: Api) -> None:
    token = await make_user(completed, "dave")  # without the permission
    where = {"project_uid": "P1", "session_uid": "S1", "datatype": "particles"}
    before = completed.snapshot()
    for params in ({**where, "dry_run": True}, ["P1", "S1", "particles", None, None, True, True]):
        dry = (await completed.call("delete_live_datatype", params, token=token))["result"]
        assert dry["dry_run"] is True and dry["file_count"] == 2 and len(dry["confirm_digest"]) == 64
    assert completed.snapshot() == before
    for refused in ({**where, "confirm_digest": dry["confirm_digest"]}, {**where, "dry_run": False},
                    ["P1", "S1", "particles", None, None, True, False]):
        error = assert_error(await completed.call("delete_live_datatype", refused, token=token), -32002, "Forbidden")
        assert "livedm user allow NAME" in error["message"]
    assert completed.snapshot() == before
    # on behalf of another user it is an admin's, dry run or not
    assert_error(await completed.call("delete_live_datatype", {**where, "dry_run": True, "user_id": "admin"},
                                      token=token), -32002, "Forbidden")


@pytest.mark.parametrize("method", ADMIN)
async def test_user_administration_needs_an_admin(completed: Api, method: str) -> None:
    token = await make_user(completed, "bob")
    await completed.ok("set_user_data_management_permission", ["bob", True])
    before = completed.snapshot()
    assert_error(await completed.call(method, _params_for(method), token=token), -32002, "Forbidden")
    assert completed.snapshot() == before


async def test_tokens_issue_and_revoke(completed: Api) -> None:
    first = await make_user(completed, "carol")
    second = (await completed.ok("issue_token", ["carol"]))["token"]
    for token in (first, second):
        assert (await completed.call("whoami", token=token))["result"]["name"] == "carol"
    assert (await completed.ok("revoke_token", ["carol"]))["revoked"] == 2
    for token in (first, second):
        assert_error(await completed.call("whoami", token=token), -32004, "Unauthenticated")
    assert_error(await completed.call("create_user", {"name": "carol"}), -32003, "Conflict")
    assert_error(await completed.call("create_user", {"name": "Bad Name"}), -32602, "InvalidParams")
    assert_error(await completed.call("create_user", {"name": "x", "role": "root"}), -32602, "InvalidParams")
    assert_error(await completed.call("issue_token", ["nobody"]), -32001, "NotFound")
    users = {u["name"]: u for u in await completed.ok("list_users")}
    assert users["admin"]["role"] == "admin" and users["carol"]["live_data_management"] is False
    assert "token" not in users["carol"] and "token_hash" not in str(users)


async def test_state_change_rules(populated: Api, tmp_path: Path) -> None:
    call = populated.call
    args = {"project_uid": "P1", "session_uid": "S1", "datatype": "micrographs", "status": "archiving"}
    error = assert_error(await call("change_session_data_management_state", args), -32003, "Conflict")
    assert "`livedm session complete P1 S1`" in error["message"]
    await populated.ok("mark_session_completed", ["P1", "S1"])
    dm = await populated.ok("change_session_data_management_state", args)
    assert dm["micrographs"]["status"] == "archiving" and dm["micrographs"]["prev_status"] == "active"
    entries = await populated.ok("get_audit_log", {"project_uid": "P1", "session_uid": "S1"})
    assert entries[0] | {"at": None} == {"at": None, "actor": "admin", "actor_kind": "user", "by": "user",
                                         "action": "state_changed",
                                         "project_uid": "P1",
                                          "session_uid": "S1", "datatype": "micrographs", "old_status": "active",
                                          "status": "archiving"}
    before = populated.snapshot()
    await populated.ok("change_session_data_management_state", args)  # the same status: nothing happens
    assert populated.snapshot() == before
    for bad, code in [({"datatype": "thumbnails"}, -32602), ({"status": "deleting"}, -32602),
                      ({"status": "missing"}, -32602), ({"status": "ARCHIVED"}, -32602),
                      ({"datatype": "movies"}, -32602), ({"session_uid": "S2"}, -32001)]:
        assert (await call("change_session_data_management_state", {**args, **bad}))["error"]["code"] == code
    assert populated.snapshot() == before
    raw = await populated.ok("change_session_data_management_state", {**args, "datatype": "raw", "status": "deleted"})
    assert raw["raw"]["status"] == "deleted" and raw["raw"]["size"] > 0  # "deleted" only marks
    populated.mongo["livedm"].sessions.update_one({}, {"$set": {"data_management.particles.status": "deleting"}})
    error = assert_error(await call("change_session_data_management_state", {**args, "datatype": "particles"}),
                         -32003, "Conflict")
    assert "deleting" in error["message"]
