"""Deletion requests are checked whole before any file is touched (SPEC §5), through the API."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from livedm.server.deletion import Plan
from tests.support.api import Api, assert_error
from tests.support.disk import disk_state


@pytest.fixture
async def completed(populated: Api) -> Api:
    await populated.ok("mark_session_completed", ["P1", "S1"])
    return populated


def delete_args(**overrides: Any) -> dict[str, Any]:
    return {"project_uid": "P1", "session_uid": "S1", "datatype": "particles", **overrides}


async def test_hostile_file_lists_are_refused_before_anything_is_deleted(completed: Api, tmp_path: Path) -> None:
    project = tmp_path / "proj"
    session = project / "S1"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.mrc").write_bytes(b"keep me")
    (session / "extract" / "escape").symlink_to(outside)
    particle = next(str(p) for p in (session / "extract").rglob("*.mrc"))
    micrograph = next(str(p) for p in (session / "motioncorrected").iterdir())
    hostile = [
        [f"{session}/extract/../../../outside/precious.mrc"],
        ["../outside/precious.mrc"],
        [str(outside / "precious.mrc")],
        [f"{session}/extract/escape/precious.mrc"],  # through a symlinked directory
        [micrograph],  # a file of another category
        [f"{session}/extract/blob/256/never_existed.mrc"],
        [particle, "/etc/passwd"],  # one good, one bad: nothing at all
        {"micrographs": [micrograph]},
        {"particles": [particle], "metadata": []},
        [],
    ]
    before_disk, before_db = disk_state(tmp_path), completed.snapshot()
    for files in hostile:
        reply = await completed.call("delete_live_datatype", delete_args(filepaths_to_delete=files))
        assert_error(reply, -32602, "InvalidParams")
    assert await completed.ok("list_jobs", {"kind": "delete"}) == []  # nothing was queued to run later
    assert disk_state(tmp_path) == before_disk
    assert completed.snapshot() == before_db


@pytest.mark.parametrize("overrides, code", [
    ({"datatype": "raw"}, -32602),
    ({"datatype": "movies"}, -32602),
    ({"session_uid": "S9"}, -32001),
    ({"user_id": "nobody"}, -32001),
])
async def test_rules_of_the_seed(completed: Api, overrides: dict, code: int) -> None:
    before = completed.snapshot()
    assert (await completed.call("delete_live_datatype", delete_args(**overrides)))["error"]["code"] == code
    assert completed.snapshot() == before


async def test_only_completed_sessions_and_not_twice(populated: Api) -> None:
    assert_error(await populated.call("delete_live_datatype", delete_args()), -32003, "Conflict")
    await populated.ok("mark_session_completed", ["P1", "S1"])
    populated.mongo["livedm"].sessions.update_one({}, {"$set": {"data_management.particles.status": "deleting"}})
    assert_error(await populated.call("delete_live_datatype", delete_args()), -32003, "Conflict")


async def test_dry_run_counts_and_changes_nothing(completed: Api, tmp_path: Path) -> None:
    particles = sorted((tmp_path / "proj" / "S1" / "extract").rglob("*.mrc"))
    before_disk, before_db = disk_state(tmp_path), completed.snapshot()
    dry = await completed.ok("delete_live_datatype", delete_args(dry_run=True))
    assert dry == {"dry_run": True, "file_count": len(particles), "registered": len(particles),
                   "bytes": sum(p.stat().st_size for p in particles), "confirm_digest": dry["confirm_digest"]}
    assert len(dry["confirm_digest"]) == 64
    subset = await completed.ok("delete_live_datatype", delete_args(dry_run=True,
                                                                     filepaths_to_delete=[str(particles[0])]))
    assert subset["file_count"] == 1 and subset["bytes"] == particles[0].stat().st_size
    assert disk_state(tmp_path) == before_disk and completed.snapshot() == before_db


async def test_a_subset_deletion_returns_the_category_to_its_status(completed: Api, tmp_path: Path) -> None:
    await completed.ok("change_session_data_management_state", delete_args(status="archived"))
    particles = sorted((tmp_path / "proj" / "S1" / "extract").rglob("*.mrc"))
    job = await completed.ok("delete_live_datatype", delete_args(filepaths_to_delete={"particles": [str(particles[0])]},
                                                                 asynchronous=False))
    assert job["state"] == "done" and job["result"]["deleted"] == 1, job
    assert not particles[0].exists() and particles[1].exists()
    category = (await completed.ok("get_session", ["P1", "S1"]))["data_management"]["particles"]
    assert category["status"] == "archived" and category["size"] == particles[1].stat().st_size


async def test_admin_may_act_on_behalf_of_a_user_others_may_not(completed: Api) -> None:
    token = (await completed.ok("create_user", {"name": "dora"}))["token"]
    await completed.ok("set_user_data_management_permission", ["dora", True])
    reply = await completed.call("delete_live_datatype", delete_args(user_id="admin", dry_run=True), token=token)
    assert_error(reply, -32002, "Forbidden")
    job = await completed.ok("delete_live_datatype", delete_args(user_id="dora", asynchronous=False))
    assert job["params"]["user_id"] == "dora" and job["created_by"] == "admin"
    deleted = [e for e in await completed.ok("get_audit_log", {}) if e["action"] == "deleted"]
    assert deleted[0]["user_id"] == "dora" and deleted[0]["files"] == 2


def test_the_confirm_digest_hashes_each_path_and_a_nul_in_order() -> None:
    """A digest a dry run gave must still confirm after an upgrade: its definition is fixed."""
    paths = ["S1/extract/b.mrc", "S1/extract/a\udcff.mrc", "S1/extract/é.mrc"]
    plan = Plan("P1", "S1", "particles", "/data/p", paths, True, "admin", "active")
    expected = hashlib.sha256(b"P1\0S1\0particles\0")
    for rel in sorted(paths):
        expected.update(os.fsencode(rel) + b"\0")
    assert plan.digest == expected.hexdigest()
    empty = Plan("P1", "S1", "particles", "/data/p", [], True, "admin", "active")
    assert empty.digest == hashlib.sha256(b"P1\0S1\0particles\0").hexdigest()
