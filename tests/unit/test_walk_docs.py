"""What a walk saw survives the trip through store documents: odd file names, keys, many chunks; a chunk
whose arrays disagree is refused rather than read wrong."""

from __future__ import annotations

import os
from array import array

import pytest

from livedm.server import walk_docs
from livedm.server.dirwalk import DirState, Entries


def _entries(count: int, keyed_every: int = 0) -> Entries:
    entries = Entries()
    names = [f"f{i}" for i in range(count)]
    if names:
        names[0] = os.fsdecode(b"not-utf8-\xff\xfe")
    keys = [(7, 1000 + i) if keyed_every and i % keyed_every == 0 else (0, 0) for i in range(count)]
    entries.extend(names, array("Q", range(1, count + 1)), array("q", (i % 13 - 1 for i in range(count))),
                   array("Q", [part for key in keys for part in key]) if keyed_every else None)
    return entries


@pytest.mark.parametrize("count, keyed_every", [(0, 0), (1, 0), (5, 2), (walk_docs.ENTRIES_PER_CHUNK * 2 + 7, 3)])
def test_entries_round_trip_through_chunks(count: int, keyed_every: int) -> None:
    entries = _entries(count, keyed_every)
    docs = list(walk_docs.chunk_docs("P1/S1", entries))
    assert len(docs) == -(-count // walk_docs.ENTRIES_PER_CHUNK)
    back = walk_docs.entries_from_chunks(docs)
    assert back.names == entries.names and back.inos == entries.inos and back.sizes == entries.sizes
    assert [back.key(i) for i in range(count)] == [entries.key(i) for i in range(count)]


def test_appended_chunks_read_back_in_order_with_or_without_keys() -> None:
    plain, keyed = _entries(4), _entries(3, keyed_every=1)
    docs = [*walk_docs.chunk_docs("k", plain), *walk_docs.chunk_docs("k", keyed)]
    back = walk_docs.entries_from_chunks(docs)
    assert back.names == plain.names + keyed.names
    assert [back.key(i) for i in range(7)] == [None] * 4 + [keyed.key(i) for i in range(3)]


def test_a_tampered_chunk_is_refused() -> None:
    doc = next(walk_docs.chunk_docs("k", _entries(10)))
    doc["sizes"] = doc["sizes"][:8]
    with pytest.raises(ValueError):
        walk_docs.entries_from_chunks([doc])


def test_a_header_keeps_odd_names_and_every_figure() -> None:
    state = DirState(os.fsdecode(b"S1/odd-\xff"), "micrographs", 12, 34, 56, [os.fsdecode(b"sub-\xfe"), "x"],
                     files=3, present=2, plain_bytes=100, keyed_bytes=50, keyed=True)
    back = walk_docs.state_from_header(walk_docs.header_doc("P1/S1", state, chunk_ids=["a"], gen="g"))
    assert back == state
