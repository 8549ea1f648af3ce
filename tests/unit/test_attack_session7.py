"""Attacks on the packed registry's `prefix` (server/store.py): backup -> restore round trips of odd paths, and
forged prefixes, counts and types that must be refused or never widen a deletion."""

from __future__ import annotations

import contextlib
import tracemalloc
import zlib
from typing import Any

import pytest
from bson.binary import Binary

from livedm.server import store as store_module
from livedm.server.store import DamagedRegistry, Piece, _doc_paths, _packed_docs, _repacked, _unpacked
from livedm.server.unlinker import by_directory

SURROGATE = b"S1/extract/\xff\xfe.mrc".decode("utf-8", "surrogateescape")


def _backup_restore(doc: dict[str, Any]) -> dict[str, Any]:
    return _repacked(_unpacked(doc))


@pytest.mark.parametrize("paths", [
    ["S1/extract/a.mrc", "S1/extract/b.mrc"],
    [SURROGATE, "S1/extract/plain.mrc"],
    ["S1/extract/a.mrc", "S1/other/b.mrc"],  # two directories: whole paths
    ["grids/2/extract/a.mrc"],
    ["S1/extract//a.mrc", "S1/extract//b.mrc"],
    ["S1/extract/ spaced\tname\n.mrc", "S1/extract/\\back"],
    ["S1/a", "S1/b", "S1/c"],
    ["top.mrc", "other.mrc"],  # no directory at all
    [],
])
def test_a_restored_document_holds_the_paths_its_backup_held(paths: list[str]) -> None:
    encoded = [p.encode("utf-8", "surrogateescape") for p in paths]
    written = {"key": "P1/S1", "source": "scan", "datatype": "particles", "count": len(paths), "gen": "g",
               "packed": Binary(zlib.compress(b"\0".join(encoded), 1))}
    assert _doc_paths(written) == paths
    restored = _backup_restore(written)
    assert _doc_paths(restored) == paths
    assert _doc_paths(_backup_restore(restored)) == paths, "a second round trip"


@pytest.mark.parametrize("prefix", [b"S1/extract/", b"grids/2/extract/sub/", b"S1/\xff\xfe/"])
def test_a_walks_prefixed_document_round_trips(prefix: bytes) -> None:
    names = [b"a.mrc", b"b\xff.mrc", b"c"]
    [doc] = _packed_docs("P1/S1", {"particles": [Piece(prefix, b"\0".join(names), len(names))]}, gen="g")
    want = [(prefix + n).decode("utf-8", "surrogateescape") for n in names]
    assert _doc_paths(doc) == want
    restored = _backup_restore(doc)
    assert bytes(restored["prefix"]) == prefix
    assert _doc_paths(restored) == want


def test_a_backed_up_path_that_is_its_directory_alone_restores_readable() -> None:
    """A backup (forged, or of a registry written before prefixes) holding one path that ends in '/': the
    restore packs it as a prefix and an empty name, and _doc_paths reads an empty `packed` as no path at all,
    so the restored registry is 'damaged' (deletions refused) though the restore's checks passed it."""
    doc = {"key": "P1/S1", "source": "scan", "datatype": "particles", "gen": "g", "paths": ["S1/extract/"]}
    restored = _repacked(doc)
    try:
        paths = _doc_paths(restored)
    except DamagedRegistry as exc:
        pytest.xfail(f"low severity, forged backups only: {exc}")
    assert paths == ["S1/extract/"]


@pytest.mark.parametrize("count", [2**31, 2**62, -1, True, 1.0, "3", None])
def test_a_forged_count_is_refused_without_allocating_it(count: object) -> None:
    doc = {"_id": 1, "key": "P1/S1", "source": "scan", "datatype": "particles", "count": count,
           "prefix": Binary(b"S1/extract/"), "packed": Binary(zlib.compress(b"a\0b", 1))}
    with pytest.raises(DamagedRegistry):
        _doc_paths(doc)


@pytest.mark.parametrize("prefix", [None, 5, [b"S1/"], {"$binary": "UzEv"}, b"", bytearray(b"S1/extract/"),
                                    memoryview(b"S1/extract/")])
def test_a_forged_prefix_of_another_type_is_refused_or_harmless(prefix: object) -> None:
    """None, a number, a list, a dict: refused. b"" (no prefix): the names are the whole paths."""
    doc = {"_id": 1, "key": "P1/S1", "source": "scan", "datatype": "particles", "count": 2,
           "prefix": prefix, "packed": Binary(zlib.compress(b"S1/a\0S1/b", 1))}
    if prefix == b"":
        assert _doc_paths(doc) == ["S1/a", "S1/b"]
        return
    if isinstance(prefix, bytearray | memoryview):
        try:
            paths = _doc_paths(doc)
        except DamagedRegistry:
            return
        assert paths == ["S1/extract/S1/a", "S1/extract/S1/b"]
        return
    with pytest.raises(DamagedRegistry):
        _doc_paths(doc)


def test_a_prefix_at_its_limit_reads_and_one_over_is_refused() -> None:
    limit = store_module.PREFIX_BYTES_MAX
    ok = b"S1/" + b"d" * (limit - 4) + b"/"
    assert len(ok) == limit
    doc = {"_id": 1, "key": "P1/S1", "source": "scan", "datatype": "particles", "count": 1,
           "prefix": Binary(ok), "packed": Binary(zlib.compress(b"a", 1))}
    assert _doc_paths(doc) == [(ok + b"a").decode()]
    doc["prefix"] = Binary(b"S1/" + b"d" * (limit - 3) + b"/")
    with pytest.raises(DamagedRegistry):
        _doc_paths(doc)


def test_a_prefix_times_many_names_is_bounded() -> None:
    """The prefix is repeated once per name when the paths are built: 4 KiB times the most names a document
    may hold inflates to about PACKED_BYTES_MAX * 4096 / 2 bytes. A forged document of 200,000 one-byte names
    under a 4 KiB prefix must not build 800 MB of paths."""
    names = b"\0".join(b"%x" % (i % 16) for i in range(200_000))
    prefix = b"S1/" + b"d" * (store_module.PREFIX_BYTES_MAX - 4) + b"/"
    doc = {"_id": 1, "key": "P1/S1", "source": "scan", "datatype": "particles", "count": 200_000,
           "prefix": Binary(prefix), "packed": Binary(zlib.compress(names, 9))}
    tracemalloc.start()
    try:
        with contextlib.suppress(DamagedRegistry):
            _doc_paths(doc)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200_000_000, f"{peak / 1e6:.0f} MB to read one forged registry document"


def test_an_absolute_path_is_grouped_apart_from_the_project_top() -> None:
    grouped = by_directory(["/passwd", "top.mrc", "/etc/shadow"])
    assert grouped == {"/": ["passwd"], "": ["top.mrc"], "/etc": ["shadow"]}


def test_a_deep_directory_of_many_files_is_written_in_documents_that_read_back() -> None:
    """Whatever bound the reader puts on a document's whole paths, the writer's pieces stay within it: 5,000
    files under a directory path of 4 KiB are 20 MB of paths."""
    prefix = b"S1/" + b"d" * (store_module.PREFIX_BYTES_MAX - 4) + b"/"
    names = [b"%04d" % i for i in range(5_000)]
    pieces = list(store_module.directory_pieces(prefix, b"\0".join(names), len(names)))
    read: list[str] = []
    for doc in _packed_docs("P1/S1", {"particles": pieces}, gen="g"):
        read += _doc_paths(doc)
    assert read == [(prefix + n).decode() for n in names]
