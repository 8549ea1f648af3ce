"""SessionReader: concurrent reads share queries, and none answers older than the moment it was asked."""

import asyncio
from pathlib import Path

import pytest

from livedm.server.errors import NOT_FOUND, ApiError
from livedm.server.reads import SessionReader
from livedm.server.sessions import Sessions
from livedm.server.store import Store


class CountingStore(Store):
    def __init__(self, inner: Store) -> None:
        super().__init__(inner.client, inner.db.name)
        self.queries: list[list[str]] = []

    def get_sessions(self, keys: list[str]) -> dict:
        self.queries.append(sorted(keys))
        return super().get_sessions(keys)


@pytest.fixture
def counting(mock_service: Sessions, mock_store: Store, tmp_path: Path) -> CountingStore:
    (tmp_path / "proj").mkdir(exist_ok=True)
    mock_service.create_project("p", str(tmp_path / "proj"))
    for i in range(3):
        mock_service.create_live_session("P1", f"s{i}")
    return CountingStore(mock_store)


async def test_concurrent_reads_are_batched(counting: CountingStore) -> None:
    reader = SessionReader(counting)
    uids = ["S1", "S2", "S3"] * 10
    sessions = await asyncio.gather(*(reader.session("P1", uid) for uid in uids))
    assert [s["uid"] for s in sessions] == uids
    assert len(counting.queries) < 5, counting.queries
    assert sum(len(q) for q in counting.queries) <= 3 * len(counting.queries)


async def test_a_read_never_returns_what_was_there_before_it_was_asked(counting: CountingStore,
                                                                       mock_service: Sessions) -> None:
    reader = SessionReader(counting)
    first = asyncio.ensure_future(reader.session("P1", "S1"))
    await asyncio.sleep(0)  # the first query may now be under way
    mock_service.change_session_status("P1", "S1", "start")
    second = await reader.session("P1", "S1")
    assert second["status"] == "running"
    assert (await first)["uid"] == "S1"


async def test_missing_session_and_project_are_told_apart(counting: CountingStore) -> None:
    reader = SessionReader(counting)
    with pytest.raises(ApiError, match="session P1 S9 does not exist") as info:
        await reader.session("P1", "S9")
    assert info.value.code == NOT_FOUND
    with pytest.raises(ApiError, match="project P7 does not exist"):
        await reader.session("P7", "S1")
