"""The mongomock double answers as the embedded store does where the store relies on it, so the store
needs no workaround: each check runs on both."""

from __future__ import annotations

import pytest

from livedm.server.store import Store


@pytest.fixture(params=["real_store", "mock_store"])
def store(request: pytest.FixtureRequest) -> Store:
    return request.getfixturevalue(request.param)


def test_an_update_returns_the_document_after_it_without_its_id(store: Store) -> None:
    store.insert_session({"project_uid": "P1", "uid": "S1", "status": "paused", "paused_at": []})
    after = store.set_session_status("P1", "S1", expect="paused", status="running", at="2026-01-01T00:00:00.000Z")
    assert after is not None and after["status"] == "running" and "_id" not in after
    assert store.set_session_status("P1", "S1", expect="paused", status="running", at="x") is None, "no match: None"


def test_a_claim_returns_the_job_as_claimed(store: Store) -> None:
    store.insert_job({"id": "J1", "kind": "hook", "state": "queued", "attempts": 0, "not_before": 0.0,
                      "lease_until": 0.0, "params": {}})
    job = store.claim_job("w1", 100.0, 30.0, started_at="2026-01-01T00:00:00.000Z")
    assert job is not None and "_id" not in job
    assert (job["state"], job["owner"], job["attempts"], job["lease_until"]) == ("running", "w1", 1, 130.0)
    assert store.claim_job("w2", 110.0, 30.0, started_at="x") is None, "leased: nobody else gets it"


def test_a_collection_is_renamed_over_another(store: Store) -> None:
    store.db.source_c.insert_one({"_id": "new"})
    store.db.target_c.insert_one({"_id": "old"})
    store._rename_over("source_c", "target_c")
    assert [d["_id"] for d in store.db.target_c.find()] == ["new"]
    assert "source_c" not in store.db.list_collection_names()
