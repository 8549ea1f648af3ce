"""What recent walks saw per directory, in memory: bounded by files held, least recently used out first, and
every caller given a copy of its own."""

from __future__ import annotations

from array import array

from livedm.server.dirwalk import Entries
from livedm.server.entries_cache import EntriesCache


def _entries(*names: str) -> Entries:
    count = len(names)
    return Entries(list(names), array("Q", range(1, count + 1)), array("q", [10] * count), None)


def test_held_directories_come_back_and_the_least_recently_used_go_first() -> None:
    cache = EntriesCache(capacity_entries=5)
    cache.put(["a1", "a2"], _entries("x", "y"))
    cache.put(["b"], _entries("z", "w"))
    got = cache.get(["a1", "a2"])  # "a" used last: "b" is the oldest now
    assert got is not None and got.names == ["x", "y"] and got.inos.tolist() == [1, 2]
    assert cache.get(["a1"]) is None, "held by the whole list of chunk ids"
    cache.put(["c"], _entries("p", "q"))
    assert cache.get(["b"]) is None
    assert cache.get(["a1", "a2"]) is not None and cache.get(["c"]) is not None


def test_callers_cannot_change_what_the_cache_hands_out_next() -> None:
    cache = EntriesCache(capacity_entries=10)
    original = _entries("x", "y")
    cache.put(["a"], original)
    original.extend(["later"], array("Q", [9]), array("q", [1]), None)  # the walk's own object goes on
    first = cache.get(["a"])
    assert first is not None
    first.extend(["mine"], array("Q", [8]), array("q", [2]), None)
    first.sizes[0] = -1
    again = cache.get(["a"])
    assert again is not None and again.names == ["x", "y"] and again.sizes.tolist() == [10, 10]


def test_a_directory_larger_than_the_cache_is_not_kept_and_zero_keeps_nothing() -> None:
    cache = EntriesCache(capacity_entries=1)
    cache.put(["big"], _entries("x", "y"))
    assert cache.get(["big"]) is None
    off = EntriesCache(capacity_entries=0)
    off.put(["a"], _entries("x"))
    assert off.get(["a"]) is None


def test_names_are_held_packed() -> None:
    cache = EntriesCache(capacity_entries=10)
    cache.put(["a"], _entries("x", "y\udcff"))  # a name that is not UTF-8 on disk
    got = cache.get(["a"])
    assert got is not None and got.packed_names() == b"x\0y\xff" and got.names == ["x", "y\udcff"]
