"""People and livedm's own accounts: removing users, changing roles, and the `hook` account nobody may touch."""

from __future__ import annotations

import pytest

from livedm.server.domain import now_iso
from livedm.server.hooks import ensure_hook_user
from livedm.server.store import Store
from tests.support.api import Api, assert_error


async def make_user(api: Api, name: str, role: str = "user") -> str:
    return (await api.ok("create_user", {"name": name, "role": role}))["token"]


def audit_of(entries: list[dict], action: str) -> list[dict]:
    return [e for e in entries if e["action"] == action]


async def test_the_hook_account_is_not_in_the_user_list(api: Api) -> None:
    await make_user(api, "dana")
    assert api.mongo["livedm"].users.find_one({"_id": "hook"}) is not None  # it exists, for hook runs
    assert [u["name"] for u in await api.ok("list_users")] == ["admin", "dana"]


@pytest.mark.parametrize(("method", "params"), [
    ("set_user_data_management_permission", {"user": "hook", "enabled": False}),
    ("set_user_data_management_permission", {"user": "hook", "enabled": True}),
    ("revoke_token", {"user": "hook"}),
    ("issue_token", {"user": "hook"}),
    ("remove_user", {"user": "hook"}),
    ("set_user_role", {"user": "hook", "role": "admin"}),
    ("remove_user", {"user": "livedm"}),
])
async def test_no_admin_may_touch_livedms_own_accounts(api: Api, method: str, params: dict) -> None:
    before = api.snapshot()
    error = assert_error(await api.call(method, params), -32002, "Forbidden")
    assert "livedm's own account" in error["message"]
    assert api.snapshot() == before
    hook = api.mongo["livedm"].users.find_one({"_id": "hook"})
    assert (hook["role"], hook["live_data_management"]) == ("user", True)


@pytest.mark.parametrize("name", ["hook", "livedm"])
async def test_livedms_own_names_cannot_be_given_to_a_user(api: Api, name: str) -> None:
    error = assert_error(await api.call("create_user", {"name": name}), -32003, "Conflict")
    assert "livedm's own" in error["message"]


def test_each_start_puts_a_denied_hook_account_right(mock_store: Store) -> None:
    mock_store.insert_user({"name": "hook", "role": "admin", "live_data_management": False, "created_at": now_iso()})
    ensure_hook_user(mock_store)
    hook = mock_store.get_user("hook")
    assert hook is not None and (hook["role"], hook["live_data_management"]) == ("user", True)


async def test_a_role_changes_and_the_audit_says_so(api: Api) -> None:
    token = await make_user(api, "erin")
    assert_error(await api.call("list_users", token=token), -32002, "Forbidden")
    promoted = await api.ok("set_user_role", {"user": "erin", "role": "admin"})
    assert promoted["role"] == "admin"
    assert (await api.call("list_users", token=token))["result"]  # an admin at once: no stale sign-in
    unchanged = api.snapshot()
    await api.ok("set_user_role", ["erin", "admin"])  # the role it has: nothing happens
    assert api.snapshot() == unchanged
    await api.ok("set_user_role", ["erin", "user"])
    assert_error(await api.call("list_users", token=token), -32002, "Forbidden")
    changes = audit_of(await api.ok("get_audit_log", {}), "role_changed")
    assert [(e["user"], e["old_role"], e["role"], e["actor"]) for e in changes] == [
        ("erin", "admin", "user", "admin"), ("erin", "user", "admin", "admin")]
    assert_error(await api.call("set_user_role", ["erin", "root"]), -32602, "InvalidParams")
    assert_error(await api.call("set_user_role", ["nobody", "admin"]), -32001, "NotFound")


async def test_the_last_admin_who_can_sign_in_keeps_the_role(api: Api) -> None:
    before = api.snapshot()
    error = assert_error(await api.call("set_user_role", ["admin", "user"]), -32003, "Conflict")
    assert "no admin who can sign in" in error["message"] and "livedm user add NAME --admin" in error["message"]
    assert api.snapshot() == before
    second = await make_user(api, "frank", "admin")
    await api.ok("set_user_role", ["admin", "user"])  # frank is an admin who can sign in
    assert (await api.call("whoami", token=second))["result"]["role"] == "admin"


async def test_a_removed_user_cannot_sign_in_and_the_audit_keeps_the_name(api: Api) -> None:
    token = await make_user(api, "gina")
    await api.ok("issue_token", ["gina"])
    await api.ok("set_user_data_management_permission", ["gina", True])
    assert (await api.call("whoami", token=token))["result"]["name"] == "gina"  # signed in, and remembered
    removed = await api.ok("remove_user", {"user": "gina"})
    assert removed == {"user": "gina", "removed": True, "tokens_revoked": 2}
    assert_error(await api.call("whoami", token=token), -32004, "Unauthenticated")
    assert "gina" not in [u["name"] for u in await api.ok("list_users")]
    assert api.mongo["livedm"].tokens.count_documents({"user": "gina"}) == 0
    entries = await api.ok("get_audit_log", {})
    assert entries[0]["action"] == "user_removed"
    assert (entries[0]["user"], entries[0]["role"], entries[0]["tokens_revoked"]) == ("gina", "user", 2)
    assert [e["user"] for e in entries if e["action"] in ("user_created", "token_issued", "permission_changed")] == [
        "gina", "gina", "gina"]
    assert_error(await api.call("remove_user", ["gina"]), -32001, "NotFound")
    await make_user(api, "gina")  # the name may be given again; the log tells the two apart by time
    assert audit_of(await api.ok("get_audit_log", {}), "user_created")[0]["user"] == "gina"


async def test_nobody_removes_themselves(api: Api) -> None:
    before = api.snapshot()
    error = assert_error(await api.call("remove_user", ["admin"]), -32003, "Conflict")
    assert "yourself" in error["message"]
    assert api.snapshot() == before


async def test_the_audit_says_which_changes_are_livedms_own(api: Api) -> None:
    store = Store(api.mongo, "livedm")
    for actor in ("hook", "livedm", "admin"):
        store.append_audit({"at": now_iso(), "actor": actor, "action": "state_changed", "project_uid": "P1"})
    entries = await api.ok("get_audit_log", {"project_uid": "P1"})
    kinds = {e["actor"]: (e["actor_kind"], e.get("actor_label")) for e in entries}
    assert kinds == {"hook": ("livedm", "livedm's hook run"), "livedm": ("livedm", "livedm itself"),
                     "admin": ("user", None)}
