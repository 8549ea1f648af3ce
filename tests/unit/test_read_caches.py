"""What the hot read path keeps in memory, and when it stops trusting it: a session read kept for
session_cache_s ends at once with any write of this process and shows another daemon's writes within the
setting; a checked token stops working at once when this process revokes it (a user's, or a hook run's when
its run ends) and within auth_cache_s when another daemon does."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from livedm.server.app import create_app
from livedm.server.appkeys import CONFIG
from livedm.server.audit import Audit
from livedm.server.auth import Authenticator, new_token, token_hash
from livedm.server.domain import HOOK_USER, now_iso
from livedm.server.errors import UNAUTHENTICATED, ApiError
from livedm.server.hooks import Hooks, ensure_hook_user
from livedm.server.jobs import JobRun, Queue
from livedm.server.reads import SessionReader
from livedm.server.sessions import Sessions
from livedm.server.store import Store
from tests.support import mock_mongo
from tests.support.api import Api, assert_error
from tests.support.config import make_config
from tests.support.hook_scripts import executable

KEEP_S = 1.0  # long enough that the steps between a read and its check fit well inside it on a loaded machine


class CountingStore(Store):
    """Counts session queries; `during_read` runs inside one, after the documents were read."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner.client, inner.db.name)
        self.queries = 0
        self.during_read: Any = None

    def get_sessions(self, keys: list[str]) -> dict:
        self.queries += 1
        found = super().get_sessions(keys)
        if self.during_read is not None:
            self.during_read()
            self.during_read = None
        return found


def _session(mock_service: Sessions, mock_store: Store, tmp_path: Path) -> CountingStore:
    (tmp_path / "proj").mkdir(exist_ok=True)
    mock_service.create_project("p", str(tmp_path / "proj"))
    mock_service.create_live_session("P1", "s")
    return CountingStore(mock_store)


def _set_title_behind_livedms_back(store: Store, title: str) -> None:
    """As another livedmd on the same database writes: not through this process's Store."""
    store.db.sessions.update_one({"_id": "P1/S1"}, {"$set": {"title": title}})


# --- sessions ---------------------------------------------------------------------------------------

async def test_a_kept_read_answers_until_session_cache_s_has_passed(mock_service: Sessions, mock_store: Store,
                                                                     tmp_path: Path) -> None:
    store = _session(mock_service, mock_store, tmp_path)
    reader = SessionReader(store, cache_s=KEEP_S)
    assert (await reader.session("P1", "S1"))["title"] == "s"
    _set_title_behind_livedms_back(store, "changed elsewhere")
    assert (await reader.session("P1", "S1"))["title"] == "s"  # another daemon's write: not yet
    assert store.queries == 1
    await asyncio.sleep(KEEP_S + 0.05)
    assert (await reader.session("P1", "S1"))["title"] == "changed elsewhere"  # within session_cache_s
    assert store.queries == 2


async def test_any_write_of_this_process_ends_kept_reads_at_once(mock_service: Sessions, mock_store: Store,
                                                                  tmp_path: Path) -> None:
    store = _session(mock_service, mock_store, tmp_path)
    reader = SessionReader(store, cache_s=60)
    assert (await reader.session("P1", "S1"))["status"] == "paused"
    mock_service.change_session_status("P1", "S1", "start")  # through another Store instance of this process
    assert (await reader.session("P1", "S1"))["status"] == "running"
    assert store.queries == 2
    assert (await reader.session("P1", "S1"))["status"] == "running"
    assert store.queries == 2  # kept again


async def test_a_read_overtaken_by_a_write_is_not_kept(mock_service: Sessions, mock_store: Store,
                                                       tmp_path: Path) -> None:
    store = _session(mock_service, mock_store, tmp_path)
    reader = SessionReader(store, cache_s=60)
    store.during_read = lambda: mock_service.change_session_status("P1", "S1", "start")
    assert (await reader.session("P1", "S1"))["status"] == "paused"  # read before the write landed
    assert (await reader.session("P1", "S1"))["status"] == "running"
    assert store.queries == 2


async def test_with_session_cache_s_0_every_call_reads(mock_service: Sessions, mock_store: Store,
                                                        tmp_path: Path) -> None:
    store = _session(mock_service, mock_store, tmp_path)
    reader = SessionReader(store, cache_s=0)
    for _ in range(3):
        await reader.session("P1", "S1")
    assert store.queries == 3


# --- tokens -----------------------------------------------------------------------------------------

async def _daemon(aiohttp_client: Any, state_dir: Path, mongo: Any) -> Api:
    app: web.Application = create_app(make_config(state_dir, auth_cache_s=str(KEEP_S)), mongo_client=mongo)
    client = await aiohttp_client(app)
    token_path = app[CONFIG].admin_token_path
    return Api(client, token_path.read_text().strip() if token_path.exists() else "", mongo)


async def test_a_revoked_token_stops_here_at_once_and_on_another_daemon_within_auth_cache_s(
        aiohttp_client: Any, tmp_path: Path) -> None:
    mongo = mock_mongo.MongoClient()
    here = await _daemon(aiohttp_client, tmp_path / "here", mongo)
    there = await _daemon(aiohttp_client, tmp_path / "there", mongo)  # the same database: its admin is here's
    token = (await here.ok("create_user", ["carol"]))["token"]
    for daemon in (here, there):
        assert (await daemon.call("whoami", token=token))["result"]["name"] == "carol"  # now cached on both
    assert (await here.ok("revoke_token", ["carol"]))["revoked"] == 1
    revoked_at = time.monotonic()
    assert_error(await here.call("whoami", token=token), -32004, "Unauthenticated")
    assert (await there.call("whoami", token=token))["result"]["name"] == "carol"  # the stated bound, not yet
    while "error" not in (reply := await there.call("whoami", token=token)):
        assert time.monotonic() - revoked_at < KEEP_S + 1.0, "still signed in past auth_cache_s"
        await asyncio.sleep(0.05)
    assert_error(reply, -32004, "Unauthenticated")


def test_a_lookup_under_way_when_a_token_is_revoked_does_not_fill_the_cache(mock_store: Store) -> None:
    token = new_token()
    mock_store.insert_user({"name": "admin", "role": "admin", "live_data_management": True, "created_at": now_iso()})
    mock_store.insert_token(token_hash(token), "admin", now_iso())

    class RevokingStore(Store):
        def user_for_token(self, digest: str, now: float) -> dict[str, Any] | None:
            found = super().user_for_token(digest, now)
            authenticator.forget_token(digest)  # revoked while this lookup was on its way back
            return found

    authenticator = Authenticator(RevokingStore(mock_store.client, mock_store.db.name), cache_s=60)
    assert authenticator.user_for(token)["name"] == "admin"
    assert authenticator.cached_user(token) is None


def test_a_hook_runs_token_stops_working_here_when_its_run_ends(mock_store: Store, tmp_path: Path) -> None:
    handed = tmp_path / "token"
    go = tmp_path / "go"
    script = executable(tmp_path / "hook.sh", f"#!/bin/sh\nprintf %s \"$LIVEDM_TOKEN\" > {handed}.part\n"
                                              f"mv {handed}.part {handed}\n"
                                              f"while [ ! -e {go} ]; do sleep 0.02; done\n")
    config = make_config(tmp_path / "state", hook_enable="true", hook_path=str(script))
    ensure_hook_user(mock_store)
    authenticator = Authenticator(mock_store, cache_s=60)
    queue = Queue(mock_store, lease_s=30, max_attempts=1)
    hooks = Hooks(config, mock_store, queue, audit=Audit(mock_store), token_revoked=authenticator.forget_token)
    queue.enqueue("hook", {"project_uid": "P1", "session_uid": "S1", "datatype": "particles",
                           "status": "archiving"}, "admin")
    job = queue.claim("test-worker")
    assert job is not None
    outcome: dict[str, Any] = {}
    run = threading.Thread(target=lambda: outcome.update(hooks.run(JobRun(job, queue))))
    run.start()
    try:
        deadline = time.monotonic() + 20
        while not handed.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        token = handed.read_text()
        assert authenticator.user_for(token)["name"] == HOOK_USER  # checked during the run: cached for 60 s
    finally:
        go.touch()
        run.join(20)
    assert outcome["exit_status"] == 0
    assert authenticator.cached_user(token) is None
    with pytest.raises(ApiError) as refused:
        authenticator.user_for(token)
    assert refused.value.code == UNAUTHENTICATED
