"""Recent walk chunks in memory: bounded by files held, least recently used out first."""

from __future__ import annotations

from livedm.server.chunk_cache import ChunkCache


def _chunk(chunk_id: str, count: int) -> dict[str, object]:
    return {"_id": chunk_id, "count": count}


def test_held_chunks_come_back_and_the_least_recently_used_go_first() -> None:
    cache = ChunkCache(capacity_entries=10)
    cache.put([_chunk("a", 4), _chunk("b", 4)])
    assert cache.get(["a", "x"]) == ({"a": _chunk("a", 4)}, ["x"])  # "a" used last: "b" is the oldest now
    cache.put([_chunk("c", 4)])
    found, missing = cache.get(["a", "b", "c"])
    assert set(found) == {"a", "c"} and missing == ["b"]


def test_a_chunk_larger_than_the_cache_is_not_kept_and_zero_keeps_nothing() -> None:
    cache = ChunkCache(capacity_entries=3)
    cache.put([_chunk("big", 4)])
    assert cache.get(["big"]) == ({}, ["big"])
    off = ChunkCache(capacity_entries=0)
    off.put([_chunk("a", 1)])
    assert off.get(["a"]) == ({}, ["a"])
